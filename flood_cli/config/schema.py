"""The run configuration: one typed object, read from YAML, overridden from the CLI,
validated in one place.

Sections: ``model`` and ``data`` and ``train`` say *what* to train (the experiment);
``runtime`` says *how* to run it (device, precision) and ``output`` where results go.
Relative data and model paths in a file are taken relative to that file, and the
resolved config saved with a run holds absolute paths, so it can be run again as is.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator, model_validator

from flood_cli.config.basics import describe_data, describe_model
from flood_cli.core.errors import shown_repr
from flood_cli.core.metrics import METRIC_NAMES
from flood_cli.core.modes import FLOOD_LEVEL_MODES, MODE_NAMES, MODES, SectionSpec

ModeName = Literal[MODE_NAMES]  # type: ignore[valid-type]

# What numpy, torch and Python's random accept as a seed.
SEED_MAX = 2**32 - 1
# A run folder name: one path component that any shell, file system and URL takes as is.
NAME_CHARACTERS = "letters, digits and . _ - + = @ ,"
NAME_MAX = 200
_NAME = re.compile(rf"[A-Za-z0-9._+=@,-]{{1,{NAME_MAX}}}")


def is_plain_name(value: str) -> bool:
    """A run (or sweep) folder name: 1 to NAME_MAX of NAME_CHARACTERS, not . or .."""
    return bool(_NAME.fullmatch(value)) and value not in (".", "..")


def _seed_in_range(value: int) -> int:
    if not 0 <= value <= SEED_MAX:
        raise ValueError(f"{shown_repr(value)} is out of range; use a whole number from 0 to {SEED_MAX} (2**32 - 1)")
    return value


class _Section(BaseModel):
    # allow_inf_nan=False: `lr: .nan` must fail as "not a finite number", before the
    # range checks (which would report a confusing "greater than 0 (got nan)").
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML reads yes/no/on/off/true/false as booleans and pydantic takes True as 1:
        # `epochs: yes` must not silently mean one epoch.
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if annotation is not bool and ({int, float} & set(get_args(annotation) or (annotation,))):
                raise ValueError(f"must be a number, not the boolean {str(value).lower()}")
        return value


class TinyBertConfig(_Section):
    """A small BERT built from scratch (random weights): for tests, CI and smoke runs."""

    num_layers: int = Field(2, ge=1, description="transformer layers")
    hidden_size: int = Field(64, ge=2, description="hidden size; a multiple of num_heads")
    num_heads: int = Field(2, ge=1, description="attention heads")
    intermediate_size: int = Field(128, ge=1, description="feed-forward size")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout probability (hidden states and attention)")

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> TinyBertConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})"
            )
        return self


class ModelConfig(_Section):
    name_or_path: str | None = Field(None, description="Hub model name or local save_pretrained folder")
    tiny: TinyBertConfig | None = Field(None, description="a small BERT built from scratch (random weights): for tests, CI and smoke runs")
    tokenizer: str | None = Field(
        None, description="Tokenizer (Hub name or folder); default: the model's own, or the shipped vocabulary for a tiny model"
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.name_or_path is None) == (self.tiny is None):
            raise ValueError("set exactly one of name_or_path (a Hub name or local folder) or tiny (a small BERT built from scratch)")
        return self

    def describe(self) -> str:
        return describe_model(self.model_dump())


class DataConfig(_Section):
    dataset: str | None = Field(None, description="Hub dataset name, e.g. glue; with subset and the *_split keys")
    subset: str | None = Field(None, description="Hub dataset configuration, e.g. sst2")
    train_file: str | None = Field(None, description="local training file: .csv .tsv .json .jsonl .parquet")
    validation_file: str | None = Field(None, description="local validation file (optional)")
    test_file: str | None = Field(None, description="local test file (optional)")
    train_split: str = Field("train", description="the Hub dataset's training split")
    validation_split: str | None = Field("validation", description="the Hub dataset's validation split")
    test_split: str | None = Field(None, description="the Hub dataset's test split (optional)")
    validation_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="held out of the training data (stratified) when there is no validation file or split"
    )
    split_seed: int = Field(
        42,
        description=f"seed of the validation hold-out, 0 to {SEED_MAX}; fixed apart from train.seed: all seeds see the same validation set",
    )
    text_column: str = Field("text", description="the column of the text")
    text_pair_column: str | None = Field(None, description="the column of a second text, for sentence-pair tasks")
    label_column: str = Field("label", description="the column of the label: strings or integers; names kept (id2label)")
    max_length: int = Field(128, ge=8, description="tokens per example, longer ones cut")
    max_train_examples: int | None = Field(None, ge=1, description="train on a seeded random subset of this many (quick runs)")
    max_val_examples: int | None = Field(None, ge=1, description="validate on a seeded random subset of this many")
    label_noise: float = Field(
        0.0, ge=0.0, lt=1.0, description="flip this seeded fraction of the training labels (validation and test never)"
    )
    label_noise_seed: int = Field(0, description=f"which labels are flipped: 0 to {SEED_MAX}; fixed apart from train.seed, like split_seed")
    holdout: HoldoutConfig | None = Field(
        None, description="train on every fold of the training split but one (AdaFlood's auxiliary runs write this)"
    )

    _split_seed_in_range = field_validator("split_seed", "label_noise_seed")(_seed_in_range)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.dataset is None) == (self.train_file is None):
            raise ValueError("set exactly one of dataset (a Hub dataset name) or train_file (a local csv/tsv/json/jsonl/parquet file)")
        return self

    def describe(self) -> str:
        return describe_data(self.model_dump())


def _section_model(spec: SectionSpec) -> type[_Section]:
    """A mode's own section (train.adaflood, ...) as a config model, from its registry entry."""
    fields: dict[str, Any] = {
        option.name: (option.type, Field(option.default, description=option.description, **option.bounds)) for option in spec.options
    }
    return create_model(spec.model, __base__=_Section, __doc__=spec.doc, __module__=__name__, **fields)


# The sections that belong to one mode each (filled with defaults when the mode is chosen).
MODE_SECTIONS = {mode.name: _section_model(mode.section) for mode in MODES if mode.section is not None}


class HoldoutConfig(_Section):
    """Leave one fold of the training split out: the training examples are cut into
    ``folds`` seeded folds (``seed``), and fold ``fold`` is not trained on."""

    folds: int = Field(ge=2, description="folds the training examples are cut into")
    fold: int = Field(ge=0, description="the fold left out, 0 to folds - 1")
    seed: int = Field(0, description="seed of the cut into folds")

    @model_validator(mode="after")
    def _fold_exists(self) -> HoldoutConfig:
        if self.fold >= self.folds:
            raise ValueError(f"fold {self.fold} does not exist among {self.folds} folds (0 to {self.folds - 1})")
        return self


DataConfig.model_rebuild()


class EarlyStoppingConfig(_Section):
    """Stop a run whose validation loss no longer improves (counted in evaluations)."""

    patience: int = Field(
        ge=1, description="evaluations in a row without an improvement (val_loss < best - min_delta) that stop the run"
    )
    min_delta: float = Field(0.0, ge=0.0, description="how much lower than the best val_loss so far counts as an improvement")


class TrainConfig(_Section):
    mode: ModeName = Field("baseline", description="the training mode (see The modes; each declared once in flood_cli/core/modes.py)")
    b: float | None = Field(None, ge=0.0, description="flood level (modes flooding and iflood)")
    lr: float = Field(2e-5, gt=0.0, description="learning rate (the descent rate in mode alternate)")
    ascent_lr: float | None = Field(None, gt=0.0, description="ascent learning rate (mode alternate)")
    ascent_optimizer: Literal["separate", "shared"] = Field(
        "separate",
        description="mode alternate: ascent steps through a second AdamW with moments of their own (separate), "
        "or with the negated gradient through the descent AdamW (shared)",
    )
    optimizer: Literal["adamw", "sgd"] | None = Field(
        None,
        description="the descent optimizer: adamw (the default) or sgd (plain, no momentum; weight decay as L2), "
        "e.g. a baseline to set beside backstitch, which is always SGD",
    )
    epochs: int = Field(3, ge=1, description="passes over the training data")
    batch_size: int = Field(
        32, ge=1, description="examples per forward pass per process; an optimizer step takes batch_size × grad_accum_steps"
    )
    eval_batch_size: int = Field(128, ge=1, description="examples per forward pass in evaluation")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay (L2 with sgd); not on biases and LayerNorm weights")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of optimizer steps spent warming up")
    schedule: Literal["linear", "cosine", "constant"] = Field("linear", description="learning-rate schedule after the warm-up")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="gradient clipping; null turns it off")
    grad_accum_steps: int = Field(1, ge=1, description="mini-batches whose gradients add up to one optimizer step")
    group_by_length: bool = Field(
        False, description="batches of similar lengths (less padding, faster; changes which examples share a batch)"
    )
    seed: int = Field(42, description=f"model init, dropout, data order: 0 to {SEED_MAX}")
    eval_every: int | str = Field(
        "epoch", description="'epoch', a fraction of an epoch ('0.5 epoch': twice per epoch) or a number of optimizer steps"
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a nan/inf loss stops the run (failed), or skips that optimizer step (costs one sync per step)"
    )
    metrics: list[str] = Field(
        default_factory=list,
        description=f"optional figures of each evaluation, as val_<name> (and test_<name>) columns: {', '.join(METRIC_NAMES)} "
        "(see Metrics); a list, or one comma-separated string",
    )
    early_stopping: EarlyStoppingConfig | None = Field(
        None, description="stop after `patience` evaluations without a val_loss improvement; null (default) trains every epoch"
    )
    # One optional section per mode that has one (train.adaflood, ...), in the registry's order.
    __annotations__.update({name: section | None for name, section in MODE_SECTIONS.items()})
    vars().update(dict.fromkeys(MODE_SECTIONS))

    _seed_in_range = field_validator("seed")(_seed_in_range)

    @field_validator("metrics", mode="before")
    @classmethod
    def _known_metrics(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):  # --set train.metrics=f1_macro,auroc
            value = [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, list):
            return value  # pydantic says what type it wants
        seen: set[Any] = set()
        for item in value:
            if item not in METRIC_NAMES:
                raise ValueError(f"unknown metric {shown_repr(item)}; use some of {', '.join(METRIC_NAMES)}")
            if item in seen:
                raise ValueError(f"{item} is listed twice; name each metric once")
            seen.add(item)
        return value

    @field_validator("eval_every", mode="before")
    @classmethod
    def _epoch_fraction_or_positive_steps(cls, value: Any) -> Any:
        # Checked before pydantic's union matching, whose own message for "foo" would
        # not say what is accepted.
        problem = (
            "must be 'epoch', a fraction of an epoch such as '0.5 epoch', or a positive number of optimizer steps "
            f"(got {shown_repr(value)})"
        )
        if isinstance(value, str):
            text = value.strip().lower()
            fraction = text.removesuffix("epochs").removesuffix("epoch").strip()
            if fraction != text:  # "epoch", "1 epoch", "0.5 epoch", "1/3 epoch"
                if not fraction:
                    return "epoch"
                try:
                    share = Fraction(fraction)
                except (ValueError, ZeroDivisionError):
                    raise ValueError(problem) from None
                if not 0 < share <= 1:
                    raise ValueError(f"{problem}; a fraction of an epoch lies in (0, 1]")
                return "epoch" if share == 1 else f"{fraction} epoch"
            if text.isdigit():
                value = int(text)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(problem)
        return value

    def section(self, mode: str) -> Any:
        """Mode ``mode``'s own section (train.adaflood, ...), None unless it is the mode.
        Its fields are made from the mode registry, so a type checker does not see them."""
        return getattr(self, mode)

    def evaluation_period(self, steps_per_epoch: int) -> Fraction:
        """Optimizer steps between evaluations (a fraction: '0.5 epoch' of 7 steps is 3.5)."""
        if self.eval_every == "epoch":
            return Fraction(steps_per_epoch)
        if isinstance(self.eval_every, str):
            return Fraction(self.eval_every.split()[0]) * steps_per_epoch
        return Fraction(self.eval_every)

    @model_validator(mode="after")
    def _mode_parameters(self) -> TrainConfig:
        if self.mode in FLOOD_LEVEL_MODES and self.b is None:
            raise ValueError(f"mode {self.mode} needs a flood level: set train.b (or pass --b)")
        if self.mode not in FLOOD_LEVEL_MODES and self.b is not None:
            raise ValueError(
                f"b (flood level) applies only to modes {' and '.join(FLOOD_LEVEL_MODES)}, but mode is {self.mode}; "
                "drop b or use mode flooding"
            )
        for mode, section in MODE_SECTIONS.items():
            if self.mode == mode and getattr(self, mode) is None:
                # Assigned through __dict__: validate_assignment would run this check again.
                self.__dict__[mode] = section()
            elif self.mode != mode and getattr(self, mode) is not None:
                raise ValueError(f"{mode} settings apply only to mode {mode}, but mode is {self.mode}; drop train.{mode}")
        if self.mode == "alternate":
            if self.ascent_lr is None:
                raise ValueError("mode alternate needs train.ascent_lr (or --ascent-lr), smaller than lr")
            if self.ascent_lr >= self.lr:
                raise ValueError(
                    f"ascent_lr ({self.ascent_lr:g}) must be smaller than lr ({self.lr:g}) in mode alternate, "
                    "or training ascends on average"
                )
        elif self.ascent_lr is not None:
            raise ValueError(f"ascent_lr applies only to mode alternate, but mode is {self.mode}; drop ascent_lr")
        if self.mode == "alternate" and self.optimizer == "sgd":
            raise ValueError("mode alternate steps through AdamW (its ascent steps too); drop optimizer: sgd")
        if self.mode == "backstitch" and self.optimizer == "adamw":
            raise ValueError("mode backstitch is plain SGD, as Kaldi requires; drop optimizer: adamw")
        return self


class RuntimeConfig(_Section):
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: a GPU if there is one")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 on a GPU that has it, else fp32")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    pad_to_multiple_of: int = Field(8, ge=1, description="pad each batch's length up to a multiple of this (tensor-core friendly)")
    compile: bool = Field(False, description="torch.compile the model (pays on GPUs; first steps are slow)")


class OutputConfig(_Section):
    dir: str = Field("runs", description="the folder of the run folders (relative: to the working directory)")
    name: str | None = Field(
        None, description=f"run folder name ({NAME_CHARACTERS}; at most {NAME_MAX}); default: generated from mode, b, lr, seed and time"
    )
    save_best_model: bool = Field(
        True, description="save the model at its best validation loss (best_model/; what flood predict applies)"
    )
    checkpoint_every: int | None = Field(
        None, ge=1, description="also checkpoint every N optimizer steps (always at each evaluation)"
    )
    keep_checkpoint: bool = Field(
        False, description="keep checkpoints/last.pt once the run completes (it is needed only to resume)"
    )
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list, description="trackers that also get every evaluation: tensorboard, mlflow, wandb (see Tracking)"
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):  # --report-to tensorboard,mlflow, or --set output.report_to=mlflow
            value = [item.strip() for item in value.split(",") if item.strip()]
        if value is None:
            return []
        return value

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        # A name is printed, pasted into shells and joined to output.dir: no path
        # separators, no "." or "..", no spaces, line breaks or other control characters.
        if value is not None and not is_plain_name(value):
            raise ValueError(
                f"{shown_repr(value)} is not a plain folder name; use 1 to {NAME_MAX} {NAME_CHARACTERS} (not . or ..)"
            )
        return value


class Config(_Section):
    model: ModelConfig = Field(description="what to train: exactly one of name_or_path (a Hub model or folder) or tiny")
    data: DataConfig = Field(
        description="what to train on: exactly one of dataset (a Hub dataset) or train_file (a local file)"
    )
    train: TrainConfig = Field(TrainConfig(), description="how to train: the mode and its optimization")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="how to run it: device, precision and speed options")
    output: OutputConfig = Field(OutputConfig(), description="where results go")

    def experiment_dict(self) -> dict[str, Any]:
        """The resolved config as plain data, as saved in the run folder (next to the
        ``meta`` section flood writes itself, which load_config drops)."""
        return self.model_dump(mode="json")
