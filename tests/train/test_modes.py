"""Each mode's optimizer step against an independent computation on a tiny BERT.

The trainer takes one real step (its own batches, its own loop). The reference starts
from a copy of the same weights and does, with plain torch, what the mode's paper says:
an explicit objective through autograd, optimizers built by hand, perturbations by
hand. The weights after the step must agree.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from flood_cli.config.load import load_config
from flood_cli.core.reporting import NullReporter
from flood_cli.data.prepare import INDEX, LABELS
from flood_cli.train.loop import Trainer
from tests.conftest import small_config, write_config

pytestmark = pytest.mark.slow  # trains models (pytest -m "not slow" leaves it out)

TINY = {"num_layers": 2, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128}


def trainer_for(tmp_path: Path, dropout: float = 0.0, levels: Any = None, **train: Any) -> Trainer:
    config = small_config(
        model={"tiny": {**TINY, "dropout": dropout}},
        train={"batch_size": 16, "weight_decay": 0.0, "max_grad_norm": None, "warmup_ratio": 0.0, "schedule": "constant", **train},
        output={"dir": str(tmp_path / "runs")},
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    return Trainer(load_config(write_config(tmp_path, config)), NullReporter(), levels)


def one_step(trainer: Trainer) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.nn.Module, Any]:
    """The first step's batch, the weights before it, and the trainer after taking it."""
    plan, micro_batches = next(trainer.epoch_steps(0))
    (batch,) = micro_batches
    saved_batch = {key: value.clone() for key, value in batch.items()}
    before = copy.deepcopy(trainer.raw_model)
    rng = torch.get_rng_state()
    trainer.train_step(plan, micro_batches)
    return saved_batch, {n: p.detach().clone() for n, p in trainer.raw_model.named_parameters()}, before, rng


def losses_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {key: value for key, value in batch.items() if key not in (LABELS, INDEX)}
    return F.cross_entropy(model(**inputs).logits.float(), batch[LABELS], reduction="none")


def adamw_step(model: torch.nn.Module, objective: Callable[[torch.nn.Module], torch.Tensor], lr: float) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.zero_grad()
    objective(model).backward()
    optimizer.step()


def assert_same_weights(got: dict[str, torch.Tensor], model: torch.nn.Module, atol: float = 2e-7) -> None:
    for name, param in model.named_parameters():
        torch.testing.assert_close(got[name], param.detach(), rtol=1e-5, atol=atol, msg=lambda m: f"{name}: {m}")  # noqa: B023 (called at once)


def assert_different_weights(got: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    assert any(not torch.allclose(got[n], p.detach(), rtol=1e-5, atol=2e-7) for n, p in model.named_parameters())


LR = 1e-3


# ---------------------------------------------------------------------------
# Per-example floods


def test_iflood_flips_exactly_the_examples_below_b(tmp_path):
    """iFlood's step equals AdamW on the explicit objective mean_i(|ℓ_i − b| + b), with b
    between the batch's smallest and largest loss: some examples ascend, the others not."""
    probe = trainer_for(tmp_path / "probe")
    batch, _, before, _ = one_step(probe)
    with torch.no_grad():
        losses = losses_of(before.eval(), batch)
    ordered = losses.sort().values
    b = float(ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2  # between two losses: |ℓ − b| is smooth at each
    assert (losses < b).any() and (losses > b).any()

    trainer = trainer_for(tmp_path, mode="iflood", b=b, lr=LR)
    batch, got, reference, _ = one_step(trainer)
    adamw_step(reference.train(), lambda m: ((losses_of(m, batch) - b).abs() + b).mean(), LR)
    assert_same_weights(got, reference)
    figures = trainer.interval.read(trainer.accelerator)
    assert figures["flood_active"] == pytest.approx(float((losses < b).float().mean()), abs=1e-6)
    assert figures["train_objective"] == pytest.approx(float(((losses - b).abs() + b).mean()), rel=1e-5)


def test_iflood_with_every_loss_above_b_is_the_baseline(tmp_path):
    batch, got, reference, _ = one_step(trainer_for(tmp_path / "i", mode="iflood", b=0.0, lr=LR))
    _, baseline, _, _ = one_step(trainer_for(tmp_path / "base", lr=LR))
    adamw_step(reference.train(), lambda m: losses_of(m, batch).mean(), LR)
    assert_same_weights(got, reference)
    for name in got:
        torch.testing.assert_close(got[name], baseline[name], rtol=1e-5, atol=2e-7)


def test_adaflood_floods_each_example_at_its_own_level(tmp_path):
    """Levels given per training example (as the auxiliary runs would give them): the
    step equals AdamW on mean_i(|ℓ_i − θ_i| + θ_i) with θ looked up by example index."""
    probe = trainer_for(tmp_path / "probe")
    size = len(probe.data.train)
    batch, _, before, _ = one_step(probe)
    with torch.no_grad():
        losses = losses_of(before.eval(), batch)
    levels = torch.full((size,), 10.0)
    levels[batch[INDEX][::2]] = losses[::2] * 1.5  # every other example of the batch below its level
    trainer = trainer_for(tmp_path, levels=levels, mode="adaflood", lr=LR)
    batch, got, reference, _ = one_step(trainer)
    theta = levels[batch[INDEX]]
    adamw_step(reference.train(), lambda m: ((losses_of(m, batch) - theta).abs() + theta).mean(), LR)
    assert_same_weights(got, reference)


def test_adaflood_with_gamma_one_is_the_baseline(tmp_path):
    from flood_cli.train.objectives import adaflood_levels

    held_out = torch.rand(300) * 2
    assert torch.equal(adaflood_levels(held_out, 1.0), torch.zeros(300))
    torch.testing.assert_close(adaflood_levels(held_out, 0.0), held_out)
    _, got, _, _ = one_step(trainer_for(tmp_path / "a", levels=adaflood_levels(held_out, 1.0), mode="adaflood", lr=LR))
    _, baseline, _, _ = one_step(trainer_for(tmp_path / "b", lr=LR))
    for name in got:
        torch.testing.assert_close(got[name], baseline[name], rtol=1e-5, atol=2e-7)


# ---------------------------------------------------------------------------
# Two passes per step


def clipped(grads: list[torch.Tensor], max_norm: float | None) -> list[torch.Tensor]:
    """torch's clip_grad_norm_ by hand: scaled by min(1, max_norm / (‖g‖ + 1e-6))."""
    if max_norm is None:
        return grads
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    return [g * torch.clamp(max_norm / (norm + 1e-6), max=1.0) for g in grads]


# The shipped configs train with weight decay and clipping on: the two-pass modes are
# checked with both (a clip of 0.2 is active on this model's first step: asserted).
KNOBS = {"plain": (0.0, None), "decay and clipping": (0.1, 0.2)}


@pytest.mark.parametrize("knobs", list(KNOBS))
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_one_backstitch_step_is_two_sgd_steps_on_the_same_batch_and_masks(tmp_path, dropout, knobs):
    """θ₁ = θ + α·η·clip(∇L(θ)), then θ₂ = θ₁ − (1 + α)·η·(clip(∇L(θ₁)) + wd/(1 + α)·θ₁),
    on the same batch; with dropout, both passes draw the masks of the step's first pass.
    L2 only in the second half, scaled by 1/(1 + α), as Kaldi's nnet3 does: the pair
    decays the weights by η·wd, like one step of the plain SGD control (not biases and
    LayerNorm weights)."""
    alpha, lr = 0.3, 0.05
    decay, max_norm = KNOBS[knobs]
    trainer = trainer_for(
        tmp_path, dropout=dropout, mode="backstitch", lr=lr, backstitch={"scale": alpha}, weight_decay=decay, max_grad_norm=max_norm
    )
    batch, got, reference, rng = one_step(trainer)
    reference.train()
    for rate, l2 in ((-alpha * lr, 0.0), ((1 + alpha) * lr, decay / (1 + alpha))):
        torch.set_rng_state(rng)  # the same dropout masks in both passes
        reference.zero_grad()
        losses_of(reference, batch).mean().backward()
        params = list(reference.parameters())
        grads = clipped([p.grad for p in params], max_norm)
        if max_norm is not None:
            assert torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])) > max_norm, "the clip must act"
        with torch.no_grad():
            for param, grad in zip(params, grads, strict=True):
                param -= rate * (grad + (l2 * param if param.ndim >= 2 else 0.0))
    assert_same_weights(got, reference, atol=1e-6)
    figures = trainer.interval.read(trainer.accelerator)
    assert figures["flood_active"] == 1.0


def test_a_backstitch_step_decays_the_weights_as_much_as_a_plain_sgd_step(tmp_path):
    """With a zero data gradient (lr-scaled decay only), the pair of halves shrinks each
    decayed weight by exactly η·wd, as the SGD control does: θ₂ = θ·(1 − η·wd)."""
    lr, decay = 0.05, 0.1
    trainer = trainer_for(tmp_path, mode="backstitch", lr=lr, backstitch={"scale": 0.3}, weight_decay=decay)
    plan, micro_batches = next(trainer.epoch_steps(0))
    before = {n: p.detach().clone() for n, p in trainer.raw_model.named_parameters()}
    tools = __import__("flood_cli.train.loop", fromlist=["_StepTools"])._StepTools(trainer, plan, micro_batches, 0, 1.0)
    for rate, share, sign in ((0.3 * lr, 0.0, -1.0), (1.3 * lr, 1 / 1.3, None)):  # what Backstitch.step asks
        for param in trainer.params:
            param.grad = torch.zeros_like(param)
        tools.update(0, rate, sign=sign, decay=share)
    for name, param in trainer.raw_model.named_parameters():
        expected = before[name] * (1 - lr * decay) if param.ndim >= 2 else before[name]
        torch.testing.assert_close(param.detach(), expected, rtol=0, atol=1e-7)


def test_backstitch_every_second_batch_takes_plain_steps_in_between(tmp_path):
    trainer = trainer_for(tmp_path, mode="backstitch", lr=0.05, backstitch={"scale": 0.3, "interval": 2})
    steps = trainer.epoch_steps(0)
    trainer.train_step(*next(steps))
    trainer.progress.step += 1
    plan, micro_batches = next(steps)
    batch = {key: value.clone() for key, value in micro_batches[0].items()}
    reference = copy.deepcopy(trainer.raw_model).train()
    trainer.train_step(plan, micro_batches)  # step 1: 1 % 2 != 0, one plain SGD step
    reference.zero_grad()
    losses_of(reference, batch).mean().backward()
    with torch.no_grad():
        for param in reference.parameters():
            param -= 0.05 * param.grad
    assert_same_weights({n: p.detach() for n, p in trainer.raw_model.named_parameters()}, reference, atol=1e-6)
    assert trainer.interval.read(trainer.accelerator)["flood_active"] == 0.5


def gradient_at(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    model.zero_grad()
    losses_of(model, batch).mean().backward()
    return [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("knobs", list(KNOBS))
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_gradnorm_follows_the_papers_finite_difference(tmp_path, dropout, knobs):
    """g = (1 − α)·∇L(θ) + α·∇L(θ + r·∇L/‖∇L‖) (Zhao et al. 2022, Alg. 1), clipped as a
    whole, then one AdamW step with its decoupled decay (not on biases and LayerNorm
    weights). The perturbation uses the unclipped ∇L. An unofficial port swaps α and
    1 − α; that form must not match."""
    r, alpha = 0.05, 0.8
    decay, max_norm = KNOBS[knobs]
    trainer = trainer_for(
        tmp_path, dropout=dropout, mode="gradnorm", lr=LR, gradnorm={"r": r, "alpha": alpha}, weight_decay=decay, max_grad_norm=max_norm
    )
    batch, got, start, rng = one_step(trainer)

    def reference(weight_first: float) -> torch.nn.Module:
        model = copy.deepcopy(start).train()
        torch.set_rng_state(rng)
        first = gradient_at(model, batch)
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in first]))
        with torch.no_grad():
            for param, g in zip(model.parameters(), first, strict=True):
                param += r * g / norm
        torch.set_rng_state(rng)
        second = gradient_at(model, batch)
        restored = copy.deepcopy(start).train()
        params = list(restored.parameters())
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=LR)
        combined = clipped([weight_first * g1 + (1 - weight_first) * g2 for g1, g2 in zip(first, second, strict=True)], max_norm)
        for param, grad in zip(params, combined, strict=True):
            param.grad = grad
        optimizer.step()
        return restored

    assert_same_weights(got, reference(1 - alpha), atol=1e-6)
    assert_different_weights(got, reference(alpha))
    # The logged objective is L + λ‖∇L‖ with λ = α·r.
    model = copy.deepcopy(start).train()
    torch.set_rng_state(rng)
    loss = losses_of(model, batch).mean()
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in torch.autograd.grad(loss, list(model.parameters()))]))
    assert trainer.interval.read(trainer.accelerator)["train_objective"] == pytest.approx(float((loss + alpha * r * norm).detach()), rel=1e-5)


# ---------------------------------------------------------------------------
# AdaFlood's auxiliary runs


def test_adaflood_levels_are_the_held_out_losses_of_its_auxiliary_runs(tmp_path, capsys):
    """γ = 0: every training example's flood level is its loss under the best model of
    the auxiliary run that did not train on it (recomputed here by the oracle, from the
    saved models); a second run reuses the auxiliary runs and says so."""
    from flood_cli.core.progress import QuietReporter
    from flood_cli.data.prepare import fold_members
    from flood_cli.train import adaflood
    from flood_cli.train.entry import run_training
    from tests import oracle
    from tests.conftest import SHIPPED_DATA

    examples = oracle.read_examples(SHIPPED_DATA)
    train_file = oracle.write_examples(tmp_path / "train.csv", examples[:61])
    val_file = oracle.write_examples(tmp_path / "val.csv", examples[100:130])
    config = small_config(
        model={"tiny": {**TINY, "dropout": 0.0}},
        train={"mode": "adaflood", "adaflood": {"gamma": 0.0, "folds": 3}, "epochs": 2, "batch_size": 8},
        output={"dir": str(tmp_path / "runs"), "name": "main"},
    )
    config["data"].update(train_file=str(train_file), validation_file=str(val_file), max_train_examples=None, max_val_examples=None, max_length=32)
    cfg = load_config(write_config(tmp_path, config))
    run_training(cfg, QuietReporter())
    folder = tmp_path / "runs" / ".adaflood" / adaflood.cache_key(cfg)
    assert capsys.readouterr().err.splitlines() == [
        f"adaflood: training auxiliary run {k + 1} of 3, without fold {k} ({folder / f'fold-{k}'})" for k in range(3)
    ]
    levels = torch.load(folder / "held_out_losses.pt", weights_only=True)
    assert levels.shape == (61,)

    tokenizer = oracle.load_tokenizer()
    for fold, members in enumerate(fold_members(61, 3, cfg.data.split_seed)):
        run = folder / f"fold-{fold}"
        summary = __import__("json").loads((run / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["num_train_examples"] == 61 - len(members)
        model = oracle.load_model(folder=run / "best_model")
        truth, _ = oracle.per_example_losses(model, tokenizer, [examples[i] for i in members], 32)
        torch.testing.assert_close(levels[members].float(), torch.tensor(truth), rtol=1e-4, atol=1e-6)

    cfg.output.name = "again"
    run_training(cfg, QuietReporter())
    assert capsys.readouterr().err.splitlines() == [f"adaflood: reusing the held-out losses of 3 auxiliary runs in {folder}"]


# ---------------------------------------------------------------------------
# train.optimizer: sgd (the control beside backstitch)


@pytest.mark.parametrize("mode, extra", [("baseline", {}), ("flooding", {"b": 10.0})])
def test_optimizer_sgd_takes_a_plain_sgd_step(tmp_path, mode, extra):
    """θ₁ = θ − η·∇L(θ) by hand; flooding with b above every loss ascends: θ + η·∇L."""
    lr = 0.05
    trainer = trainer_for(tmp_path, mode=mode, lr=lr, optimizer="sgd", **extra)
    batch, got, reference, _ = one_step(trainer)
    reference.train()
    reference.zero_grad()
    losses_of(reference, batch).mean().backward()
    sign = -1.0 if mode == "flooding" else 1.0
    with torch.no_grad():
        for param in reference.parameters():
            param -= sign * lr * param.grad
    assert_same_weights(got, reference, atol=1e-6)
    assert all(type(getattr(opt, "optimizer", opt)).__name__ == "SGD" for opt in trainer.optimizers)


def test_optimizer_sgd_with_weight_decay_is_sgd_with_l2_and_leaves_biases_alone(tmp_path):
    lr, decay = 0.05, 0.1
    trainer = trainer_for(tmp_path, lr=lr, optimizer="sgd", weight_decay=decay)
    batch, got, reference, _ = one_step(trainer)
    reference.train()
    reference.zero_grad()
    losses_of(reference, batch).mean().backward()
    with torch.no_grad():
        for param in reference.parameters():
            l2 = decay * param if param.ndim >= 2 else 0.0
            param -= lr * (param.grad + l2)
    assert_same_weights(got, reference, atol=1e-6)


@pytest.mark.parametrize(
    "train, message",
    [
        ({"mode": "alternate", "ascent_lr": 1e-4, "optimizer": "sgd"}, "mode alternate steps through AdamW (its ascent steps too); drop optimizer: sgd"),
        ({"mode": "backstitch", "optimizer": "adamw"}, "mode backstitch is plain SGD, as Kaldi requires; drop optimizer: adamw"),
        ({"optimizer": "lion"}, "optimizer"),
    ],
)
def test_optimizer_refusals(tmp_path, train, message):
    from flood_cli.core.errors import FloodError

    with pytest.raises(FloodError, match=__import__("re").escape(message)):
        trainer_for(tmp_path, **train)
