"""The run configuration: one typed object, read from YAML, overridden from the CLI,
validated in one place.

Sections: ``model`` and ``data`` and ``train`` say *what* to train (the experiment);
``runtime`` says *how* to run it (device, precision) and ``output`` where results go.
Relative data and model paths in a file are taken relative to that file, and the
resolved config saved with a run holds absolute paths, so it can be run again as is.
"""

from __future__ import annotations

import copy
import difflib
import re
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from flood_cli.core import safe_yaml
from flood_cli.core.errors import FloodError, shown, shown_repr
from flood_cli.runs.folder import MAX_CONFIG_BYTES, describe_data, describe_model, read_run_file

ModeName = Literal["baseline", "flooding", "iflood", "adaflood", "alternate", "backstitch", "gradnorm"]
MODES: tuple[str, ...] = get_args(ModeName)

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

    num_layers: int = Field(2, ge=1)
    hidden_size: int = Field(64, ge=2)
    num_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(128, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> TinyBertConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})"
            )
        return self


class ModelConfig(_Section):
    name_or_path: str | None = Field(None, description="Hub model name or local folder")
    tiny: TinyBertConfig | None = None
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
    dataset: str | None = Field(None, description="Hub dataset name, e.g. glue")
    subset: str | None = Field(None, description="Hub dataset configuration, e.g. sst2")
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    train_split: str = "train"
    validation_split: str | None = "validation"
    test_split: str | None = None
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    split_seed: int = Field(42, description=f"0 to {SEED_MAX}")
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    max_length: int = Field(128, ge=8)
    max_train_examples: int | None = Field(None, ge=1)
    max_val_examples: int | None = Field(None, ge=1)
    label_noise: float = Field(
        0.0, ge=0.0, lt=1.0, description="flip this seeded fraction of the training labels (validation and test never)"
    )
    label_noise_seed: int = Field(0, description=f"which labels are flipped: 0 to {SEED_MAX}")
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


class AdaFloodConfig(_Section):
    """Mode adaflood: per-example flood levels from auxiliary models trained without each example."""

    gamma: float = Field(0.5, ge=0.0, le=1.0, description="1 is plain training, 0 floods at the held-out loss")
    folds: int = Field(2, ge=2, le=20, description="auxiliary models, each trained without one fold of the training split")


class BackstitchConfig(_Section):
    """Mode backstitch (Kaldi): a step of −scale·lr, then one of (1 + scale)·lr on the same batch."""

    scale: float = Field(0.3, gt=0.0, description="α; Kaldi's recipes use 0.2–0.3")
    interval: int = Field(1, ge=1, description="backstitch every n-th mini-batch (plain steps in between)")


class GradNormConfig(_Section):
    """Mode gradnorm: L + λ‖∇L‖ by finite differences, α = λ / r (α = 1 is SAM)."""

    r: float = Field(0.1, gt=0.0, description="the perturbation radius")
    alpha: float = Field(0.8, ge=0.0, le=1.0, description="weight of the perturbed gradient")


# The sections that belong to one mode each (filled with defaults when the mode is chosen).
MODE_SECTIONS: dict[str, type[_Section]] = {"adaflood": AdaFloodConfig, "backstitch": BackstitchConfig, "gradnorm": GradNormConfig}


class HoldoutConfig(_Section):
    """Leave one fold of the training split out: the training examples are cut into
    ``folds`` seeded folds (``seed``), and fold ``fold`` is not trained on."""

    folds: int = Field(ge=2)
    fold: int = Field(ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _fold_exists(self) -> HoldoutConfig:
        if self.fold >= self.folds:
            raise ValueError(f"fold {self.fold} does not exist among {self.folds} folds (0 to {self.folds - 1})")
        return self


DataConfig.model_rebuild()


class TrainConfig(_Section):
    mode: ModeName = "baseline"
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
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of optimizer steps spent warming up")
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="gradient clipping; null turns it off")
    grad_accum_steps: int = Field(1, ge=1)
    group_by_length: bool = Field(
        False, description="batches of similar lengths (less padding, faster; changes which examples share a batch)"
    )
    seed: int = Field(42, description=f"0 to {SEED_MAX}")
    eval_every: int | str = Field(
        "epoch", description="'epoch', a fraction of an epoch ('0.5 epoch': twice per epoch) or a number of optimizer steps"
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a nan/inf loss stops the run (failed), or skips that optimizer step (costs one sync per step)"
    )
    adaflood: AdaFloodConfig | None = None
    backstitch: BackstitchConfig | None = None
    gradnorm: GradNormConfig | None = None

    _seed_in_range = field_validator("seed")(_seed_in_range)

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

    def evaluation_period(self, steps_per_epoch: int) -> Fraction:
        """Optimizer steps between evaluations (a fraction: '0.5 epoch' of 7 steps is 3.5)."""
        if self.eval_every == "epoch":
            return Fraction(steps_per_epoch)
        if isinstance(self.eval_every, str):
            return Fraction(self.eval_every.split()[0]) * steps_per_epoch
        return Fraction(self.eval_every)

    @model_validator(mode="after")
    def _mode_parameters(self) -> TrainConfig:
        flood_modes = ("flooding", "iflood")
        if self.mode in flood_modes and self.b is None:
            raise ValueError(f"mode {self.mode} needs a flood level: set train.b (or pass --b)")
        if self.mode not in flood_modes and self.b is not None:
            raise ValueError(
                f"b (flood level) applies only to modes flooding and iflood, but mode is {self.mode}; "
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
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    pad_to_multiple_of: int = Field(8, ge=1, description="pad each batch's length up to a multiple of this (tensor-core friendly)")
    compile: bool = Field(False, description="torch.compile the model (pays on GPUs; first steps are slow)")


class OutputConfig(_Section):
    dir: str = "runs"
    name: str | None = Field(
        None, description=f"run folder name ({NAME_CHARACTERS}; at most {NAME_MAX}); default: generated from mode, b, lr, seed and time"
    )
    save_best_model: bool = False
    checkpoint_every: int | None = Field(
        None, ge=1, description="also checkpoint every N optimizer steps (always at each evaluation)"
    )
    keep_checkpoint: bool = Field(
        False, description="keep checkpoints/last.pt once the run completes (it is needed only to resume)"
    )
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list, description="trackers that also get every evaluation: tensorboard, mlflow"
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
    model: ModelConfig
    data: DataConfig
    train: TrainConfig = TrainConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    output: OutputConfig = OutputConfig()

    def experiment_dict(self) -> dict[str, Any]:
        """The resolved config as plain data, as saved in the run folder (next to the
        ``meta`` section flood writes itself, which load_config drops)."""
        return self.model_dump(mode="json")


# ---------------------------------------------------------------------------
# Loading, overriding, validating


def flat_values(section: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {dotted key: value}, to say which keys two versions differ in."""
    if not isinstance(section, dict):
        return {prefix[:-1]: section}
    return {k: v for key, value in section.items() for k, v in flat_values(value, f"{prefix}{key}.").items()}


def changed_keys(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, value before, value after) for every key whose value differs, sorted;
    a key on one side only counts, with None on the other."""
    old, new = flat_values(before), flat_values(after)
    return [(key, old.get(key), new.get(key)) for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def changes_text(changed: list[tuple[str, Any, Any]], show: Any, most: int) -> str:
    """'key old → new, …' for the first ``most`` changes, and how many more."""
    text = ", ".join(f"{key} {show(old)} → {show(new)}" for key, old, new in changed[:most])
    return text + (f" and {len(changed) - most} more" if len(changed) > most else "")


def parse_set_option(item: str) -> tuple[str, Any]:
    """Parse ``section.key=value`` (the value is read as YAML: 1e-5, true, null, [a, b])."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or "." not in key or not all(key.split(".")):
        raise FloodError(f"--set {shown_repr(item)}: expected section.key=value, e.g. --set train.epochs=5")
    try:
        value = safe_yaml.load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_override(raw: dict[str, Any], dotted_key: str, value: Any) -> None:
    """Set ``raw[a][b] = value`` for ``a.b``, creating sections as needed."""
    node = raw
    *parents, leaf = dotted_key.split(".")
    for depth, part in enumerate(parents, start=1):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            value_key = ".".join(parents[:depth])
            raise FloodError(
                f"cannot set {_printable(dotted_key)}: {_printable(part)} is a value, not a section; "
                f"set {_printable(value_key)}=VALUE instead"
            )
        node = child
    node[leaf] = value


# A YAML error's own description (it may quote the file: an undefined alias's name).
PROBLEM_CHARACTERS = 200


def read_yaml(path: Path, run_file: bool = False) -> dict[str, Any]:
    """A config file as a mapping. At most MAX_CONFIG_BYTES are read; ``run_file`` (a run
    folder's config.yaml, on --resume) also refuses a file that is not a regular file
    (a named pipe would block): your own --config may be a pipe, e.g. <(...)."""
    if not path.exists():
        raise FloodError(f"config file {path} not found; pass an existing YAML file, e.g. --config configs/tiny.yaml")
    if path.is_dir():
        raise FloodError(f"config {path} is a folder; pass a YAML file, e.g. --config configs/tiny.yaml")
    try:
        if run_file:
            data = read_run_file(path, MAX_CONFIG_BYTES)
        else:
            with open(path, "rb") as handle:
                data = handle.read(MAX_CONFIG_BYTES + 1)
            if len(data) > MAX_CONFIG_BYTES:
                raise FloodError(
                    f"config {path} is larger than flood reads (more than {MAX_CONFIG_BYTES // 2**20} MiB); "
                    "a config has a few kB: pass the right file"
                )
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FloodError(f"config {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise FloodError(f"cannot read config {path}: {exc.strerror or exc}; check the file's permissions") from None
    try:
        data = safe_yaml.load(text)
    except safe_yaml.RefusedYaml as exc:  # aliases that expand too far, a duplicate key
        raise FloodError(f"{path}: {exc.problem}; {exc.fix}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = shown(getattr(exc, "problem", None) or str(exc).splitlines()[0], PROBLEM_CHARACTERS)
        raise FloodError(f"YAML syntax error in {path}{where}: {problem}; fix the file and retry") from None
    if data is None:
        raise FloodError(f"config {path} is empty; it needs at least the model and data sections (see configs/tiny.yaml)")
    if not isinstance(data, dict):
        raise FloodError(f"config {path} must be a mapping of sections (model, data, train…), not a {type(data).__name__}")
    return data


def _printable(text: str) -> str:
    """A key or name as given, with line breaks and control characters escaped so that an
    error message stays on one line, and cut to 80 characters."""
    return shown(text)


def _unusable_path(key: str, path: str, exc: Exception) -> FloodError:
    if isinstance(exc, RuntimeError) and path.startswith("~"):
        reason = f"no home folder for {path.split('/', 1)[0]}"
    elif isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
    else:
        reason = str(exc)
    return FloodError(f"{key}: {shown_repr(path)} is not a usable path ({shown(reason.rstrip('.'))}); fix {key}")


def _resolve_relative(path: str | None, base: Path, key: str = "path") -> str | None:
    if path is None:
        return None
    try:
        p = Path(path).expanduser()  # RuntimeError for ~nosuchuser
        return str(p if p.is_absolute() else (base / p).resolve())  # ValueError for a NUL byte
    except (RuntimeError, ValueError, OSError) as exc:
        raise _unusable_path(key, path, exc) from None


def _looks_like_path(name: str, base: Path, key: str = "path") -> bool:
    if name.startswith((".", "/", "~")):
        return True
    try:
        return (base / name).exists()
    except (ValueError, OSError) as exc:  # a NUL byte, a name too long for a file
        raise _unusable_path(key, name, exc) from None


def resolve_paths(config: Config, base: Path) -> Config:
    """Make the file paths of a config absolute, taking relative ones from ``base``;
    a path that cannot be one (``~nosuchuser/x``, a NUL byte) is a FloodError."""
    data = config.data
    for field in ("train_file", "validation_file", "test_file"):
        value = getattr(data, field)
        if value is not None:
            setattr(data, field, _resolve_relative(value, base, f"data.{field}"))
    model = config.model
    for field in ("name_or_path", "tokenizer"):
        value = getattr(model, field)
        if value is not None and _looks_like_path(value, base, f"model.{field}"):
            setattr(model, field, _resolve_relative(value, base, f"model.{field}"))
    return config


def _format_validation_error(
    error: ValidationError, source: str, origins: dict[str, str] | None = None, before: dict[str, Any] | None = None
) -> str:
    """One line for the first problem, said as coming from ``source``, or from the
    ``--set`` that gave the key (``origins``: dotted key -> that option as given;
    ``before``: the file's own sections, to tell an unknown section of the file from
    one that a --set made)."""
    errors = error.errors()
    # An unknown key first: a misspelt section (`modle:`) also makes the real one
    # "missing", and the spelling is what the user has to fix.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    parts = [str(part) for part in first["loc"]]
    # Drop pydantic's union-branch tags from the location, but never the user's own
    # unknown key (the last part of an extra_forbidden), whatever it is called.
    keep_last = first["type"] == "extra_forbidden"
    loc = [
        part for i, part in enumerate(parts)
        if (keep_last and i == len(parts) - 1) or not part.startswith(("function-", "literal["))
    ]
    where = _printable(".".join(loc))
    source = _origin(loc, first["type"] == "extra_forbidden", origins or {}, before or {}) or source
    if first["type"] == "extra_forbidden" and loc:
        section_model = _section_at(loc[:-1])
        known = list(section_model.model_fields) if section_model else []
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
        return f"{source}: unknown key '{where}'{hint}"
    message = first["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if first["type"] == "missing":
        message = "missing section; add it (see configs/tiny.yaml)" if len(loc) == 1 else "missing key; add it"
    if first["type"] in ("model_type", "model_attributes_type", "dict_type"):
        value = first.get("input")
        given = "empty" if value is None else f"a {type(value).__name__} ({shown_repr(value)})"
        message = f"must be a section of key: value lines, not {given}; see configs/tiny.yaml"
    got = ""
    if first["type"] not in ("missing", "value_error", "model_type", "model_attributes_type", "dict_type") and "input" in first:
        got = f" (got {shown_repr(first['input'])})"
    message = message[:1].lower() + message[1:]
    return f"{source}: {where + ': ' if where else ''}{message}{got}"


def _section_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not models:
            return None
        model = models[0]
    return model


def _origin(loc: list[str], unknown: bool, origins: dict[str, str], before: dict[str, Any]) -> str | None:
    """The --set that put the failing key (or the section above it) in the config."""
    dotted = ".".join(loc)
    for key, origin in origins.items():
        if dotted == key or dotted.startswith(key + "."):
            return origin
        if unknown and key.startswith(dotted + ".") and not _has_path(before, loc):
            return origin  # --set trian.lr=1 made the unknown section 'trian'
    return None


def _has_path(raw: Any, parts: list[str]) -> bool:
    for part in parts:
        if not isinstance(raw, dict) or part not in raw:
            return False
        raw = raw[part]
    return True


def validate(
    raw: dict[str, Any], source: str, origins: dict[str, str] | None = None, before: dict[str, Any] | None = None
) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise FloodError(_format_validation_error(exc, source, origins, before)) from None


def load_config(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    sets: tuple[str, ...] | list[str] = (),
    new_run: bool = True,
) -> Config:
    """Read a YAML config, apply CLI overrides, validate once, make paths absolute.

    ``overrides`` maps dotted keys to values (``{"train.lr": 1e-5}``); ``sets`` are
    ``section.key=value`` strings from ``--set``. The flag ``--b`` alone switches the
    mode to flooding, as users expect from ``flood train --config cfg.yaml --b 0.5``.
    ``new_run`` (not a resume): a run folder's own config.yaml drops its run name.

    ``output.dir`` is the one path not taken from the config's folder: like an output
    folder of any command, a relative one is taken from the working directory, so that
    one config serves many projects (a run's saved config holds it absolute).
    """
    path = Path(path)
    raw = read_yaml(path, run_file=not new_run)
    saved_run = raw.pop("meta", None) is not None
    overrides = dict(overrides or {})
    if saved_run and new_run and isinstance(raw.get("output"), dict):
        # A run folder's config.yaml run again: the same experiment under a fresh name
        # (its own name is taken), in the same output folder (saved absolute).
        raw["output"].pop("name", None)
    origins: dict[str, str] = {}  # a key given with --set: errors about it name the --set
    before = copy.deepcopy(raw) if sets else raw
    for item in sets:
        key, value = parse_set_option(item)
        overrides[key] = value
        origins[key] = f"--set {shown(item)}"
    _apply_flag_rules(raw, overrides)
    for key, value in overrides.items():
        apply_override(raw, key, value)
    config = validate(raw, f"config error in {path}", origins, before)
    try:
        return resolve_paths(config, path.parent.resolve())
    except FloodError as exc:
        raise FloodError(f"config error in {path}: {exc}") from None


def _apply_flag_rules(raw: dict[str, Any], overrides: dict[str, Any]) -> None:
    """``--b X`` alone switches a baseline config to flooding (iflood keeps iflood);
    with a mode that has no flood level it is an error, said in the flag's terms."""
    if overrides.get("train.b") is None:
        return
    section = raw.get("train")
    train = section if isinstance(section, dict) else {}
    mode = overrides.get("train.mode", train.get("mode", "baseline"))
    if "train.mode" not in overrides and mode in ("baseline", "flooding", "iflood"):
        overrides["train.mode"] = "flooding" if mode == "baseline" else mode
        return
    if mode == "baseline":
        raise FloodError("--b (flood level) applies only to mode flooding; drop --b or --mode baseline")
    if mode not in ("flooding", "iflood"):
        raise FloodError(
            f"--b (flood level) applies only to modes flooding and iflood, but the mode is {mode}; "
            "drop --b or pass --mode flooding"
        )
