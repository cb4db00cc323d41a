"""AdaFlood's auxiliary runs (Bae et al., TMLR 2024): a flood level for every training
example from a model that never saw it.

The training split is cut into K seeded folds. For each fold an ordinary flood run
(mode baseline, the main run's model, data and hyperparameters, the best model kept)
trains on the other folds; each example's loss under the best model of the run that
held it out is its held-out loss ``ℓ_aux,i``. The main run floods example ``i`` at
``θ_i = −log((1 − γ)·exp(−ℓ_aux,i) + γ)`` (objectives.adaflood_levels).

The auxiliary runs live in ``<output.dir>/.adaflood/<key>/fold-<k>/`` with the held-out
losses in ``held_out_losses.pt``; ``key`` hashes everything they depend on (model,
data and its files' contents, training settings, K), so runs that share them (the
seeds and γ values of a sweep) train them once. They are resumable like any run, and a
lock lets concurrent workers wait for one another instead of training them twice. A
launch of several processes trains them together, as data parallelism. The cached
losses are used only when they are one finite, non-negative loss per training example;
a damaged file is said in one warning and computed again, never used.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from flood_cli.config.load import validate
from flood_cli.config.schema import Config
from flood_cli.core.errors import FloodError
from flood_cli.core.modes import MODE_KEYS_OF
from flood_cli.core.reporting import NullReporter
from flood_cli.data.batches import Collator
from flood_cli.data.prepare import content_hash, fold_members, prepare_data
from flood_cli.model import load_tokenizer, quiet_transformers
from flood_cli.runs.folder import RunDir, atomic_write
from flood_cli.train.checkpoint import last_checkpoint
from flood_cli.train.objectives import adaflood_levels
from flood_cli.train.setup import make_accelerator

CACHE_DIR = ".adaflood"
LOSSES_FILE = "held_out_losses.pt"
# Settings of the main run that the auxiliary runs do not depend on.
# How the auxiliary runs are trained: entry.run_training and entry.resume_training,
# handed in by the entry point (adaflood never imports the loop or the entry points).
TrainRun = Callable[[Config, Any], Any]
ResumeRun = Callable[[Path, Any], Any]
AUX_IGNORED_TRAIN = ("mode", *dict.fromkeys(key.removeprefix("train.") for keys in MODE_KEYS_OF.values() for key in keys), "seed", "eval_every", "metrics")


def aux_experiment(cfg: Config) -> dict[str, Any]:
    """What the auxiliary runs train (without the fold): the main run's model, data and
    training settings, in mode baseline, seeded by data.split_seed so that every seed
    of a sweep shares them."""
    raw = cfg.experiment_dict()
    train = {k: v for k, v in raw["train"].items() if k not in AUX_IGNORED_TRAIN}
    train.update(mode="baseline", seed=cfg.data.split_seed, eval_every="epoch")
    return {"model": raw["model"], "data": raw["data"], "train": train, "runtime": raw["runtime"]}


def _settings(cfg: Config) -> Any:
    """The train.adaflood section: validation fills it in whenever the mode is adaflood."""
    settings = cfg.train.section("adaflood")
    assert settings is not None, "train.adaflood is filled in for mode adaflood"
    return settings


def cache_key(cfg: Config) -> str:
    experiment = aux_experiment(cfg)
    experiment.pop("runtime")  # how the runs ran does not change what they learned
    files = {
        key: content_hash(Path(path))
        for key in ("train_file", "validation_file", "test_file")
        if (path := experiment["data"].get(key)) and Path(path).is_file()
    }
    text = json.dumps({"experiment": experiment, "files": files, "folds": _settings(cfg).folds}, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class _CacheRemoved(Exception):
    """The cache folder (and its lock) went away while its auxiliary runs were built."""


class _LockFile:
    def __init__(self, path: Path, inode: int):
        self.path, self.inode = path, inode

    def removed(self) -> bool:
        """Whether the locked file is no longer at its path (its folder was removed)."""
        try:
            return os.stat(self.path).st_ino != self.inode
        except FileNotFoundError:
            return True


@contextmanager
def _locked(folder: Path) -> Iterator[_LockFile]:
    """Hold the cache folder's lock. A lock file removed with its folder while another
    process waited on it is no lock at all: the waiter checks, once it has the lock,
    that the file it locked is still the one at the path, and otherwise locks again."""
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # another process building them: wait for it
            lock = _LockFile(folder / ".lock", os.fstat(handle.fileno()).st_ino)
            if lock.removed():
                continue
            try:
                yield lock
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
            return


def held_out_losses(cfg: Config, reporter: Any, train: TrainRun, resume: ResumeRun) -> torch.Tensor:
    """``ℓ_aux,i`` for every training example, in the order of the prepared training split.

    With several processes (torchrun, accelerate launch) every process trains each
    auxiliary run together, as data parallelism, exactly as one process would with the
    combined batch: the main process holds the lock and decides for each fold whether
    to reuse, continue or train it, and tells the others; it scores the folds and hands
    every process the losses. (Each process taking the lock itself deadlocked: the
    one holding it waited in its first run for the others, who waited on the lock.)

    A cache folder removed while its runs were built is built again, once, by a single
    process (several processes are in the middle of a run together and cannot start
    over: they stop with one line)."""
    folder = Path(cfg.output.dir) / CACHE_DIR / cache_key(cfg)
    group = _Processes(cfg)
    try:
        return _held_out_losses(cfg, folder, reporter, group, train, resume)
    except _CacheRemoved as exc:
        if group.count > 1:
            raise FloodError(f"{exc}; run the command again to train the auxiliary runs anew") from None
        reporter.warning(f"{exc}; training the auxiliary runs again")
    try:
        return _held_out_losses(cfg, folder, reporter, group, train, resume)
    except _CacheRemoved as exc:
        raise FloodError(f"{exc}, a second time; stop what removes it, then run the command again") from None


def _held_out_losses(cfg: Config, folder: Path, reporter: Any, group: _Processes, train: TrainRun, resume: ResumeRun) -> torch.Tensor:
    folds = _settings(cfg).folds
    with _locked(folder) if group.main else nullcontext() as lock:
        losses_path = folder / LOSSES_FILE
        cached = group.share(_cached_losses(cfg, losses_path, reporter) if group.main else None)
        if cached is not None:
            if group.main:
                reporter.notice(f"adaflood: reusing the held-out losses of {folds} auxiliary runs in {folder}")
            return cached
        doing = "the auxiliary runs were built"
        try:
            run_dirs = []
            for fold in range(folds):
                doing = f"auxiliary run {fold + 1} of {folds} trained"
                run_dirs.append(_aux_run(cfg, folder, fold, folds, reporter, group, train, resume))
            losses = None
            if group.main:
                doing = "the held-out losses were computed"
                scored = [_score_fold(cfg, run_dir, fold, folds) for fold, run_dir in enumerate(run_dirs)]
                losses = torch.full((sum(len(members) for _, members in scored),), float("nan"), dtype=torch.float64)
                for fold_losses, members in scored:
                    losses[torch.tensor(members)] = fold_losses.double()
                assert not torch.isnan(losses).any(), "every example lies in exactly one fold"

                atomic_write(losses_path, lambda handle: torch.save(losses, handle), binary=True)
                if lock is not None and lock.removed():  # written into a folder made again meanwhile: not ours to keep
                    raise FileNotFoundError(losses_path)
        except (OSError, FloodError) as exc:
            # A run's files vanish as "No such file" (or a model "not found") from deep in
            # the loop or the scoring; the lock file, gone too, tells the removal apart.
            if group.main and lock is not None and lock.removed():
                raise _CacheRemoved(f"adaflood: the cache folder {folder} was removed while {doing}") from exc
            raise
        return group.share(losses)


def _cached_losses(cfg: Config, path: Path, reporter: Any) -> torch.Tensor | None:
    """The held-out losses saved in ``path``, when they are one finite, non-negative
    floating-point loss for each example of the training split; otherwise None, and one
    warning line saying why (they are computed again: a damaged cache is never used, and
    never fatal). Read as data only: a pickle that asks for code is refused unrun."""
    from flood_cli.train.checkpoint import UnreadableData, read_data

    if not path.is_file():
        return None
    try:
        losses = read_data(path)
    except UnreadableData as exc:
        problem: str | None = f"{exc.reason} (nothing in it was run)" if exc.code else exc.reason
    else:
        problem = _losses_problem(losses, _train_size(cfg))
        if problem is None:
            return losses
    reporter.warning(f"adaflood: {path} {problem}; computing the held-out losses again from the auxiliary runs")
    return None


def _losses_problem(losses: Any, examples: int) -> str | None:
    """What makes ``losses`` unusable as the held-out losses of ``examples`` examples."""
    if not isinstance(losses, torch.Tensor):
        return f"holds a {type(losses).__name__}, not a tensor of losses"
    if losses.dim() != 1 or len(losses) != examples:
        held = f"{len(losses)} losses" if losses.dim() == 1 else f"a tensor of shape {tuple(losses.shape)}"
        return f"holds {held}, not one for each of the {examples} training examples"
    if not losses.is_floating_point():
        return f"holds {str(losses.dtype).removeprefix('torch.')} values, not floating-point losses"
    bad = int((~torch.isfinite(losses)).sum())
    if bad:
        return f"holds {bad} NaN or infinite loss(es) of {examples}"
    negative = int((losses < 0).sum())
    if negative:
        return f"holds {negative} negative loss(es) of {examples} (a cross-entropy is at least 0)"
    return None


def _train_size(cfg: Config) -> int:
    """How many examples the prepared training split holds (Datasets' cache makes the
    run's own preparation, after this one, a read)."""

    quiet_transformers()
    return len(prepare_data(cfg.data, load_tokenizer(cfg.model)).train)


class _Processes:
    """The processes of a launch, before any run exists: one process needs no talk; with
    several, the main one's values are broadcast (gloo or NCCL, whatever Accelerate set up)."""

    def __init__(self, cfg: Config):
        self.count = int(os.environ.get("WORLD_SIZE", "1"))
        self.main = True
        if self.count > 1:
            state = make_accelerator(cfg.runtime).state  # joins the process group, as the runs will
            self.count, self.main = state.num_processes, state.is_main_process

    def share(self, value: Any) -> Any:
        """The main process's ``value``, on every process."""
        if self.count == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def wait(self) -> None:
        if self.count > 1:
            import torch.distributed as dist

            dist.barrier()


def _aux_config(cfg: Config, folder: Path, fold: int, folds: int) -> Config:
    raw = copy.deepcopy(aux_experiment(cfg))
    raw["data"]["holdout"] = {"folds": folds, "fold": fold, "seed": cfg.data.split_seed}
    raw["output"] = {"dir": str(folder), "name": f"fold-{fold}", "save_best_model": True}
    return validate(raw, f"adaflood auxiliary run fold-{fold}")


def _aux_run(
    cfg: Config, folder: Path, fold: int, folds: int, reporter: Any, group: _Processes, train: TrainRun, resume: ResumeRun
) -> Path:
    """Train (or continue, or reuse) the auxiliary run that holds out ``fold``; the main
    process decides, every process acts."""
    run_dir = folder / f"fold-{fold}"
    action = None
    if group.main:
        status = RunDir(run_dir).load_summary().get("status") if run_dir.exists() else None
        if status == "completed" and (run_dir / "best_model").exists():
            action, said = "reuse", f"adaflood: reusing auxiliary run {run_dir}"
        elif status is not None and last_checkpoint(run_dir).exists():
            action, said = "continue", f"adaflood: continuing auxiliary run {fold + 1} of {folds} ({run_dir})"
        else:
            action, said = "train", f"adaflood: training auxiliary run {fold + 1} of {folds}, without fold {fold} ({run_dir})"
            if run_dir.exists():  # stopped before its first checkpoint: nothing to keep
                import shutil

                shutil.rmtree(run_dir)
        reporter.notice(said)
    action = group.share(action)
    group.wait()  # a stale folder is gone before any process looks for it
    if action == "continue":
        resume(run_dir, NullReporter())
    elif action == "train":
        train(_aux_config(cfg, folder, fold, folds), NullReporter())
    return run_dir


@torch.inference_mode()
def _score_fold(cfg: Config, run_dir: Path, fold: int, folds: int) -> tuple[torch.Tensor, list[int]]:
    """The held-out fold's per-example losses under the run's best model."""
    import torch.nn.functional as F
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()
    tokenizer = load_tokenizer(cfg.model)
    data = prepare_data(cfg.data, tokenizer)
    members = fold_members(len(data.train), folds, cfg.data.split_seed)[fold]
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.runtime.device != "cpu" else "cpu")
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "best_model").to(device).eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collate = Collator(data.train, pad_id, cfg.runtime.pad_to_multiple_of)
    losses = []
    size = cfg.train.eval_batch_size
    for start in range(0, len(members), size):
        batch = {k: v.to(device) for k, v in collate(members[start : start + size]).items()}
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        losses.append(F.cross_entropy(logits, labels, reduction="none").cpu())
    if not members:
        raise FloodError(f"adaflood: fold {fold} of {folds} holds no training example; use fewer folds")
    return torch.cat(losses), members


def levels_for(cfg: Config, reporter: Any, train: TrainRun, resume: ResumeRun) -> torch.Tensor:
    """Each training example's flood level for this run's γ; ``train`` and ``resume``
    train the auxiliary runs (entry.run_training and entry.resume_training)."""

    return adaflood_levels(held_out_losses(cfg, reporter, train, resume).float(), _settings(cfg).gamma)
