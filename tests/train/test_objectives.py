"""The training modes as pure pieces: scalar tensors, tiny linear models, no BERT."""

import math

import pytest
import torch

from flood_cli.train.objectives import (
    Alternate,
    Baseline,
    Flooding,
    apply_sign,
    clip_and_sign,
    flood,
    flood_sign,
    is_ascent,
    lr_scale,
    make_mode,
)


@pytest.mark.parametrize(
    "loss, b, expected_sign",
    [(0.9, 0.5, 1.0), (0.5, 0.5, 1.0), (0.49, 0.5, -1.0), (0.0, 0.5, -1.0), (0.3, 0.0, 1.0), (0.0, 0.0, 1.0)],
)
def test_flood_gradient_flips_exactly_below_b(loss, b, expected_sign):
    assert flood_sign(torch.tensor(loss), b).item() == expected_sign
    if loss != b:  # |L - b| has no derivative at L = b
        # The loss as a function of a parameter: L = x, so dL/dx = 1.
        x = torch.tensor(loss, requires_grad=True)
        flood(x, b).backward()
        assert x.grad.item() == expected_sign


def test_flood_value_is_mirrored_below_b():
    assert flood(torch.tensor(0.8), 0.5).item() == pytest.approx(0.8)
    assert flood(torch.tensor(0.2), 0.5).item() == pytest.approx(0.8)


def test_flood_sign_times_gradient_equals_gradient_of_flooded_loss():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    for b in (0.0, 0.5, 5.0):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        flood(loss, b).backward()
        expected = [p.grad.clone() for p in model.parameters()]

        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        apply_sign(grads, flood_sign(loss.detach(), b))
        for got, want in zip(grads, expected, strict=True):
            torch.testing.assert_close(got, want)


def test_flooding_with_accumulation_equals_flooding_the_large_batch():
    """Micro-batches of unequal size, each weighted by its share of the step; the flood
    is decided on the step's mean loss, not per micro-batch."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 2)
    x, y = torch.randn(10, 5), torch.randint(0, 2, (10,))
    parts = (slice(0, 3), slice(3, 10))
    with torch.no_grad():
        full_loss = torch.nn.functional.cross_entropy(model(x), y).item()
        part_losses = [torch.nn.functional.cross_entropy(model(x[p]), y[p]).item() for p in parts]
    # b between the step's mean and the larger micro-batch loss: the step must ascend,
    # while flooding micro-batch by micro-batch would descend on one of them.
    b = (full_loss + max(part_losses)) / 2
    assert full_loss < b < max(part_losses)

    def grads_of(objective_per_part):
        model.zero_grad()
        objective_per_part()
        return [p.grad.clone() for p in model.parameters()]

    expected = grads_of(lambda: flood(torch.nn.functional.cross_entropy(model(x), y), b).backward())

    def accumulated():
        step_loss_sum = torch.zeros(())
        for part in parts:
            loss_sum = torch.nn.functional.cross_entropy(model(x[part]), y[part], reduction="sum")
            (loss_sum / 10).backward()
            step_loss_sum += loss_sum.detach()
        grads = [p.grad for p in model.parameters()]
        apply_sign(grads, Flooding(lr=1.0, flood_level=b).gradient_sign(0, step_loss_sum / 10))

    for got, want in zip(grads_of(accumulated), expected, strict=True):
        torch.testing.assert_close(got, want)

    def flooded_one_by_one():
        for part in parts:
            loss = torch.nn.functional.cross_entropy(model(x[part]), y[part])
            (flood(loss, b) * (part.stop - part.start) / 10).backward()

    naive = grads_of(flooded_one_by_one)
    assert not all(torch.allclose(got, want) for got, want in zip(naive, expected, strict=True))


def test_baseline_never_touches_the_gradient():
    mode = Baseline(lr=1e-3)
    assert mode.gradient_sign(0, torch.tensor(0.0)) is None
    assert mode.learning_rate(5, 0.5) == 5e-4
    grads = [torch.ones(3)]
    apply_sign(grads, None)
    assert grads[0].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "ascent_optimizer, signs, optimizers",
    [("separate", [None, None, None, None], [0, 1, 0, 1]), ("shared", [None, -1.0, None, -1.0], [0, 0, 0, 0])],
)
def test_alternate_descends_on_even_steps_and_ascends_on_odd_steps(ascent_optimizer, signs, optimizers):
    mode = Alternate(lr=1e-5, ascent_lr=1e-6, ascent_optimizer=ascent_optimizer)
    assert [mode.learning_rate(step, 1.0) for step in range(4)] == [1e-5, 1e-6, 1e-5, 1e-6]
    assert [mode.gradient_sign(step, torch.tensor(1.0)) for step in range(4)] == signs
    assert [mode.optimizer_index(step) for step in range(4)] == optimizers
    assert [mode.ascent(step, None) for step in range(4)] == [0.0, 1.0, 0.0, 1.0]
    # The schedule scales both rates.
    assert mode.learning_rate(1, 0.5) == pytest.approx(5e-7)
    assert mode.objective(1, torch.tensor(0.7), None).item() == pytest.approx(-0.7)
    assert mode.objective(2, torch.tensor(0.7), None).item() == pytest.approx(0.7)
    assert is_ascent(-1.0) == 1.0 and is_ascent(None) == 0.0
    assert is_ascent(torch.tensor(-1.0)).item() == 1.0


def test_shared_ascent_feeds_negated_gradient_into_adamw_moments():
    """ascent_optimizer: shared — the ascent step is AdamW's step on -g at ascent_lr."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3))
    optimizer = torch.optim.AdamW([weight], lr=1e-2, betas=(0.9, 0.999), weight_decay=0.0)
    mode = Alternate(lr=1e-2, ascent_lr=1e-3, ascent_optimizer="shared")
    g1, g2 = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.5, 1.0, -1.0])
    for step, g in enumerate((g1, g2)):
        for group in optimizer.param_groups:
            group["lr"] = mode.learning_rate(step, 1.0)
        weight.grad = g.clone()
        apply_sign([weight.grad], mode.gradient_sign(step, torch.tensor(1.0)))
        optimizer.step()
    state = optimizer.state[weight]
    torch.testing.assert_close(state["exp_avg"], 0.9 * 0.1 * g1 + 0.1 * (-g2))
    torch.testing.assert_close(state["exp_avg_sq"], 0.999 * 0.001 * g1**2 + 0.001 * g2**2)


@pytest.mark.parametrize(
    "step, total, warmup, schedule, expected",
    [
        (0, 100, 10, "linear", 0.1),
        (9, 100, 10, "linear", 1.0),
        (10, 100, 10, "linear", 1.0),
        (55, 100, 10, "linear", 0.5),
        (0, 100, 0, "linear", 1.0),
        (50, 100, 0, "constant", 1.0),
        (50, 100, 0, "cosine", 0.5),
        (100, 100, 0, "cosine", 0.0),
    ],
)
def test_lr_scale(step, total, warmup, schedule, expected):
    assert lr_scale(step, total, warmup, schedule) == pytest.approx(expected)


def test_make_mode_builds_each_mode_from_its_train_section():
    from flood_cli.config.schema import TrainConfig
    from flood_cli.train.objectives import AdaFlood, Backstitch, GradNorm, IFlood

    assert isinstance(make_mode(TrainConfig(mode="baseline", lr=1e-3)), Baseline)
    assert make_mode(TrainConfig(mode="flooding", lr=1e-3, b=0.5)).flood_level == 0.5
    assert make_mode(TrainConfig(mode="iflood", lr=1e-3, b=0.4)) == IFlood(1e-3, 0.4)
    assert make_mode(TrainConfig(mode="alternate", lr=1e-3, ascent_lr=1e-4)).ascent_lr == 1e-4
    assert make_mode(TrainConfig(mode="alternate", lr=1e-3, ascent_lr=1e-4, ascent_optimizer="shared")).ascent_optimizer == "shared"
    assert make_mode(TrainConfig(mode="backstitch", lr=0.1)) == Backstitch(0.1, 0.3, 1)
    assert make_mode(TrainConfig(mode="gradnorm", lr=1e-3, gradnorm={"r": 0.05})) == GradNorm(1e-3, 0.05, 0.8)
    levels = torch.tensor([0.1, 0.2])
    assert make_mode(TrainConfig(mode="adaflood", lr=1e-3), levels).levels is levels
    assert isinstance(make_mode(TrainConfig(mode="adaflood", lr=1e-3), levels), AdaFlood)
    assert math.isclose(Flooding(1e-3, 0.5).objective(0, torch.tensor(0.2), None).item(), 0.8, rel_tol=1e-6)
    assert make_mode(TrainConfig(mode="flooding", lr=1e-3, b=0.5)).optimizers == ("adamw",)
    assert make_mode(TrainConfig(mode="alternate", lr=1e-3, ascent_lr=1e-4)).optimizers == ("adamw", "adamw_ascent")
    assert make_mode(TrainConfig(mode="backstitch", lr=0.1)).optimizers == ("sgd",)


@pytest.mark.parametrize("sign", [None, 1.0, -1.0, "tensor+", "tensor-"])
@pytest.mark.parametrize("max_norm", [None, 0.05, 100.0])
def test_clip_and_sign_equals_flipping_then_torch_clipping_bit_for_bit(sign, max_norm):
    torch.manual_seed(0)
    grads = [torch.randn(7, 5), torch.randn(5), torch.randn(3, 3)]
    if isinstance(sign, str):
        sign = torch.tensor(1.0 if sign.endswith("+") else -1.0)
    expected = [g.clone() for g in grads]
    if sign is not None:
        expected = [g * sign for g in expected]
    if max_norm is not None:
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in expected]
        for param, g in zip(params, expected, strict=True):
            param.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        expected = [p.grad for p in params]
    clip_and_sign(grads, sign, max_norm)
    for got, want in zip(grads, expected, strict=True):
        assert torch.equal(got, want)


def test_separate_ascent_keeps_moments_of_its_own_and_climbs():
    """ascent_optimizer: separate (the default) — as the trainer builds them: a descent
    AdamW and an ascent AdamW with maximize=True over the same parameters."""
    from flood_cli.config.schema import TrainConfig
    from flood_cli.train.setup import make_optimizer

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    train = TrainConfig(mode="alternate", lr=1e-2, ascent_lr=1e-3, weight_decay=0.0)
    optimizers = [make_optimizer(model, train, torch.device("cpu"), kind) for kind in ("adamw", "adamw_ascent")]
    mode = Alternate(lr=1e-2, ascent_lr=1e-3)
    g1, g2 = torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([[0.5, 1.0, -1.0]])
    before_ascent = None
    for step, g in enumerate((g1, g2)):
        optimizer = optimizers[mode.optimizer_index(step)]
        for group in optimizer.param_groups:
            group["lr"] = mode.learning_rate(step, 1.0)
        model.weight.grad = g.clone()
        assert mode.gradient_sign(step, torch.tensor(1.0)) is None
        before_ascent = model.weight.detach().clone()
        optimizer.step()
    descent_state = optimizers[0].state[model.weight]
    ascent_state = optimizers[1].state[model.weight]
    torch.testing.assert_close(descent_state["exp_avg"], 0.1 * g1)  # never sees the ascent gradient
    # maximize=True feeds -g into its own moments: one sign throughout, nothing cancels.
    torch.testing.assert_close(ascent_state["exp_avg"], 0.1 * -g2)
    # Adam's first step moves each weight by lr in the direction of sign(g): up for ascent.
    torch.testing.assert_close(model.weight.detach() - before_ascent, 1e-3 * torch.sign(g2), rtol=1e-4, atol=1e-7)
