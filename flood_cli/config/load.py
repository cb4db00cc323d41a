"""Loading a run configuration: read the YAML file, apply the CLI's overrides
(``--set section.key=value`` and the flags), validate once into a `Config` with
one-line error messages, and make its paths absolute. Also the dotted-key view of
two configs that says which keys differ (a resume, a sweep's trial).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from flood_cli.config.basics import MAX_CONFIG_BYTES
from flood_cli.config.schema import Config
from flood_cli.core import safe_yaml
from flood_cli.core.errors import FloodError, shown, shown_repr
from flood_cli.core.modes import FLOOD_LEVEL_MODES


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


def read_yaml(path: Path, read_run_file: Callable[[Path, int], bytes] | None = None) -> dict[str, Any]:
    """A config file as a mapping. At most MAX_CONFIG_BYTES are read; ``read_run_file``
    (given for a run folder's config.yaml, on --resume: runs.folder.read_run_file) also
    refuses a file that is not a regular file (a named pipe would block): your own
    --config may be a pipe, e.g. <(...)."""
    if not path.exists():
        raise FloodError(f"config file {path} not found; pass an existing YAML file, e.g. --config configs/tiny.yaml")
    if path.is_dir():
        raise FloodError(f"config {path} is a folder; pass a YAML file, e.g. --config configs/tiny.yaml")
    try:
        if read_run_file is not None:
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
    read_run_file: Callable[[Path, int], bytes] | None = None,
) -> Config:
    """Read a YAML config, apply CLI overrides, validate once, make paths absolute.

    ``overrides`` maps dotted keys to values (``{"train.lr": 1e-5}``); ``sets`` are
    ``section.key=value`` strings from ``--set``. The flag ``--b`` alone switches the
    mode to flooding, as users expect from ``flood train --config cfg.yaml --b 0.5``.
    ``new_run`` (not a resume): a run folder's own config.yaml drops its run name.
    ``read_run_file`` (on a resume): how a run folder's config.yaml is read, see read_yaml.

    ``output.dir`` is the one path not taken from the config's folder: like an output
    folder of any command, a relative one is taken from the working directory, so that
    one config serves many projects (a run's saved config holds it absolute).
    """
    path = Path(path)
    raw = read_yaml(path, read_run_file)
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
    if "train.mode" not in overrides and mode in ("baseline", *FLOOD_LEVEL_MODES):
        overrides["train.mode"] = "flooding" if mode == "baseline" else mode
        return
    if mode == "baseline":
        raise FloodError("--b (flood level) applies only to mode flooding; drop --b or --mode baseline")
    if mode not in FLOOD_LEVEL_MODES:
        raise FloodError(
            f"--b (flood level) applies only to modes {' and '.join(FLOOD_LEVEL_MODES)}, but the mode is {mode}; "
            "drop --b or pass --mode flooding"
        )
