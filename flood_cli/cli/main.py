"""The `flood` command line: thin commands that validate input and delegate.

Nothing heavy is imported here at module level (no torch, transformers or datasets),
so `flood --help` and `flood compare` answer at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

from flood_cli.core.errors import FloodError, RunInterrupted, escaped
from flood_cli.core.modes import MODE_NAMES

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C
_debug = {"on": False}
DEBUG_HELP = "show the full traceback of errors"


def _set_debug(value: bool) -> None:
    if value:
        _debug["on"] = True


def _debug_option() -> Any:
    """A `--debug` switch for a subcommand, made by Typer as for any declared option."""
    probe = typer.Typer()

    @probe.command()
    def _probe(
        debug: Annotated[bool, typer.Option("--debug", help=DEBUG_HELP, expose_value=False, callback=_set_debug)] = False,
    ) -> None:
        pass

    return typer.main.get_command(probe).params[0]


class FloodGroup(typer.core.TyperGroup):
    """The `flood` group: `--debug` is taken before the subcommand (`flood --debug
    train`) and after it (`flood train --debug`), for every subcommand alike."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for command in self.commands.values():
            if not any("--debug" in param.opts for param in command.params):
                command.params.append(_debug_option())


def _plain_help() -> None:
    """Two fixes to Typer's rich help pages: a switch (`--quiet`) shows no `<bool>`
    type, as in Click's plain help, and a required argument reads `PATHS...` in the
    usage line, not `{paths}...`. Each only where this Typer has what it replaces."""
    option, argument = getattr(typer.core, "TyperOption", None), getattr(typer.core, "TyperArgument", None)
    if option is not None and hasattr(option, "display_type_rich"):
        shown_type = option.display_type_rich

        def display_type_rich(self: Any, ctx: Any) -> str | None:
            return None if getattr(self, "is_bool_flag", False) else shown_type(self, ctx)

        option.display_type_rich = display_type_rich
    if argument is not None and hasattr(argument, "_usage_display_name"):
        def usage_display_name(self: Any) -> str:
            name = self.metavar or self.name.upper()
            return (name if self.required else f"[{name}]") + ("..." if self.nargs != 1 else "")

        argument._usage_display_name = usage_display_name


_plain_help()


def _print_versions(value: bool) -> None:
    if not value:
        return
    for line in version_lines():
        typer.echo(line)
    raise typer.Exit()


VERSIONED_PACKAGES = ("transformers", "accelerate", "datasets", "optuna")


def version_lines() -> list[str]:
    """flood's version and those of what it trains with; torch is imported for this only."""
    from importlib import metadata

    from flood_cli import __version__

    lines = [f"flood {__version__}"]
    torch: ModuleType | None
    try:
        import torch
    except ImportError:
        torch = None
    lines.append(f"torch {torch.__version__}" if torch is not None else "torch: not installed")
    for package in VERSIONED_PACKAGES:  # read from the installed metadata, not imported
        try:
            lines.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{package}: not installed")
    if torch is not None and torch.cuda.is_available():
        count = torch.cuda.device_count()
        lines.append(f"CUDA {torch.version.cuda} ({count} GPU{'s' if count > 1 else ''}: {torch.cuda.get_device_name(0)})")
    elif torch is not None and torch.version.cuda:
        lines.append(f"CUDA: not available (torch is built for CUDA {torch.version.cuda}, but finds no GPU)")
    else:
        lines.append("CUDA: not available")
    return lines


def app_help(modes: tuple[str, ...] = MODE_NAMES) -> str:
    """The top-level help line, naming every training mode of the registry."""
    return f"Fine-tune BERT classifiers in the modes {', '.join(modes[:-1])} or {modes[-1]}; sweep settings and compare the runs."


app = typer.Typer(
    cls=FloodGroup,
    add_completion=False,
    no_args_is_help=True,
    help=app_help(),
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help=f"{DEBUG_HELP} (also after the command: flood train --debug)")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_versions,
            help="print the versions of flood, torch, transformers, accelerate, datasets, optuna and CUDA, and exit",
        ),
    ] = False,
) -> None:
    _debug["on"] = debug


def _fail(message: str, code: int = EXIT_ERROR) -> None:
    typer.echo(f"error: {escaped(' '.join(message.split()))}", err=True)
    raise typer.Exit(code)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Every failure becomes one line on stderr and a non-zero exit code (tracebacks
    only with --debug); an interrupted run says how to resume it."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except RunInterrupted as exc:
            if not exc.report:
                raise typer.Exit(EXIT_INTERRUPTED) from None
            typer.echo(f"interrupted: {exc}; checkpoint written", err=True)
            if exc.run_dir is not None:
                typer.echo(f"resume with: flood train --resume {exc.run_dir}", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except KeyboardInterrupt:
            if _debug["on"]:
                raise
            _fail("interrupted", EXIT_INTERRUPTED)
        except Exception as exc:
            if _debug["on"]:
                raise
            if isinstance(exc, FloodError):
                _fail(str(exc))
            if isinstance(exc, OSError) and exc.strerror:
                where = f" {exc.filename}" if exc.filename else ""
                _fail(f"cannot write or read{where}: {exc.strerror}; check the disk and permissions")
            _fail(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)")

    return wrapper


@app.command()
@user_errors
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config, e.g. configs/tiny.yaml")] = None,
    mode: Annotated[
        str | None, typer.Option(help=" | ".join(MODE_NAMES))
    ] = None,
    b: Annotated[float | None, typer.Option("--b", help="flood level; alone, it switches the mode to flooding")] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate (descent rate in mode alternate)")] = None,
    ascent_lr: Annotated[float | None, typer.Option(help="ascent learning rate (mode alternate)")] = None,
    gamma: Annotated[float | None, typer.Option(help="mode adaflood: 1 is plain training, 0 floods at the held-out loss")] = None,
    epochs: Annotated[int | None, typer.Option(help="number of epochs")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (model init, dropout, data order)")] = None,
    out: Annotated[Path | None, typer.Option(help="folder that holds run folders [default: runs]")] = None,
    name: Annotated[str | None, typer.Option(help="run folder name [default: generated]")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override any config key: --set train.batch_size=16 (repeatable)")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="continue a stopped run from its last checkpoint, with its saved config")
    ] = None,
    report_to: Annotated[
        str | None, typer.Option("--report-to", help="also log every evaluation to tensorboard, mlflow and/or wandb: tensorboard,mlflow,wandb")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Fine-tune a classifier and write metrics.csv and summary.json to a new run folder."""
    from flood_cli.config.load import load_config

    given = {
        "--config": config, "--mode": mode, "--b": b, "--lr": lr, "--ascent-lr": ascent_lr, "--gamma": gamma, "--epochs": epochs,
        "--seed": seed, "--out": out, "--name": name, "--set": set_ or None, "--report-to": report_to,
    }
    if resume is not None:
        changed = [flag for flag, value in given.items() if value is not None]
        if changed:
            raise FloodError(
                f"--resume continues the saved experiment, so {changed[0]} cannot be changed; "
                "drop it, or start a new run with --config"
            )
        if not resume.exists():
            raise FloodError(f"run folder {resume} does not exist; pass the folder that flood train printed (run folder: …)")
        from flood_cli.train.entry import resume_training

        _train_and_report(lambda reporter: resume_training(resume, reporter=reporter), quiet)
        return
    if config is None:
        raise FloodError("flood train needs --config FILE (e.g. configs/tiny.yaml) or --resume RUN_FOLDER")
    if mode is not None and mode not in MODE_NAMES:
        raise FloodError(f"--mode {mode!r} is not a mode; use {', '.join(MODE_NAMES[:-1])} or {MODE_NAMES[-1]}")
    flags = {
        "train.mode": mode,
        "train.b": b,
        "train.lr": lr,
        "train.ascent_lr": ascent_lr,
        "train.adaflood.gamma": gamma,
        "train.epochs": epochs,
        "train.seed": seed,
        "output.dir": str(out) if out is not None else None,
        "output.name": name,
        "output.report_to": report_to,
    }
    overrides = {key: value for key, value in flags.items() if value is not None}
    cfg = load_config(config, overrides, sets=set_ or [])
    # Mistakes in the data files and model folders are said before the slow part: the
    # imports of torch and transformers, reading the data, loading the model.
    from flood_cli.data.prepare import check_files
    from flood_cli.model import check_sources

    check_files(cfg.data)
    check_sources(cfg.model)
    with _removed_if_left_empty(Path(cfg.output.dir)):
        from flood_cli.train.entry import run_training

        _train_and_report(lambda reporter: run_training(cfg, reporter=reporter), quiet)


@contextlib.contextmanager
def _removed_if_left_empty(folder: Path) -> Iterator[None]:
    """The output folder and those above it that do not exist yet are made for this run:
    when it fails, the ones still empty are removed again (deepest first)."""
    made: list[Path] = []
    path = folder
    while not os.path.lexists(path) and path != path.parent:
        made.append(path)
        path = path.parent
    try:
        yield
    except BaseException:
        for path in made:
            try:
                path.rmdir()  # only an empty folder; anything in it keeps it
            except OSError:
                break
        raise


def _train_and_report(job: Any, quiet: bool) -> None:
    """Run ``job(reporter)`` under a progress bar (or none) and print where its results are."""
    from flood_cli.core.progress import make_reporter

    with make_reporter(quiet=quiet) as reporter:
        reporter.say_threads = typer.echo  # a CPU run's thread count, one line on stdout (not in sweep workers)
        result = job(reporter)
    if not result.is_main_process:  # under `accelerate launch`, one process reports
        return
    typer.echo(f"run folder: {result.run_dir}")
    typer.echo(f"best val_loss: {result.best_val_loss:.6f} (epoch {result.best_epoch:g}, step {result.best_step})")
    if result.stopped_at_step is not None:
        typer.echo(f"stopped early at step {result.stopped_at_step}: {result.stop_reason}")
    best = result.run_dir / "best_model"
    if best.is_dir():
        from flood_cli.sweep.spec import human_bytes

        size = sum(path.stat().st_size for path in best.rglob("*") if path.is_file())
        typer.echo(f"best model {human_bytes(size)} in {best}")


@app.command()
@user_errors
def predict(
    run_dir: Annotated[Path, typer.Argument(help="a run folder of flood train", metavar="RUN_DIR")],
    input_file: Annotated[Path, typer.Option("--input", "-i", help="texts to classify: csv, tsv, json, jsonl or parquet")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="CSV to write, replaced if it exists (default: <input stem>.predictions.csv beside the input, never replaced)"),
    ] = None,
    last: Annotated[bool, typer.Option("--last", help="apply the latest checkpoint's weights instead of best_model/")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="texts per forward pass")] = 64,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Apply a run's best model (or --last: its latest checkpoint) to a file; score it where it has labels."""
    from flood_cli.predict.command import bar, check_request, metrics_line, predict_file

    check_request(run_dir, input_file, output, last, batch_size)  # before torch is loaded
    progress = None if quiet else bar()
    task: list[Any] = []

    def advance(done: int, total: int | None) -> None:
        if progress is not None:
            if not task:
                task.append(progress.add_task("predict", total=total))
            progress.update(task[0], completed=done)

    with progress if progress is not None else contextlib.nullcontext():
        outcome = predict_file(run_dir, input_file, output, last, batch_size, advance)
    typer.echo(f"predictions: {outcome.rows} rows in {outcome.output}")
    if outcome.metrics_file is not None:
        typer.echo(metrics_line(outcome.metrics))
        typer.echo(f"metrics: {outcome.metrics_file}")


@app.command()
@user_errors
def compare(
    paths: Annotated[list[Path], typer.Argument(help="run folders, or folders that hold runs")],
    plot: Annotated[Path | None, typer.Option(help="write loss/accuracy curves to this image (.png, .pdf, .svg)")] = None,
    csv: Annotated[Path | None, typer.Option("--csv", help="write the table to this CSV file")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="print the table as Markdown")] = False,
    json_: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
    x: Annotated[str, typer.Option(help="x axis of the plot: epoch | step")] = "epoch",
    wide: Annotated[bool, typer.Option("--wide", help="print every table column, however narrow the terminal")] = False,
    seeds_as: Annotated[str, typer.Option("--seeds-as", help="seed groups in the plot: band (mean ± sd) | lines (one per run)")] = "band",
    raw_verdicts: Annotated[bool, typer.Option(
        "--raw-verdicts",
        help="judge each comparison alone (p < 0.05) instead of Holm-adjusting the p values of all the comparisons shown")] = False,
    metric: Annotated[str, typer.Option(
        "--metric",
        help="what groups are judged on: loss (val_loss, lowest best), accuracy, or one of train.metrics "
        "(f1_macro, f1_weighted, auroc, auprc, mcc: highest best)")] = "loss",
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q",
        help="no warning lines on stderr (skipped, damaged or unfinished runs); the table and errors still print, "
        "and --json keeps the warnings in its output")] = False,
) -> None:
    """Put runs side by side: best validation loss, seed noise, loss-up-accuracy-up evaluations."""
    from flood_cli.compare.command import compare_command

    output = compare_command(paths, plot=plot, csv_path=csv, markdown=markdown, as_json=json_, x_axis=x,
                             wide=wide, seeds_as=seeds_as, raw_verdicts=raw_verdicts, metric=metric)
    for warning in [] if quiet else output.warnings:  # a path may hold a line break: one line each all the same
        typer.echo(f"warning: {escaped(warning)}", err=True)
    typer.echo(output.text)


@app.command()
@user_errors
def sweep(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="base YAML config of every run")] = None,
    mode: Annotated[str | None, typer.Option(help="any mode of flood train [default: the config's]")] = None,
    b: Annotated[str | None, typer.Option("--b", help="flood levels to try: 0,0.05,0.1 (a baseline group is always added); auto[:0.5,1,2]: multiples of the baseline's train loss at its best evaluation")] = None,
    lr: Annotated[str | None, typer.Option(help="learning rates to try: 1e-5,2e-5")] = None,
    ascent_lr: Annotated[str | None, typer.Option(help="ascent learning rates to try (mode alternate): 1e-6,5e-6")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="sweep any key: --set train.weight_decay=0,0.01 (repeatable; one value: fixed)")
    ] = None,
    settings: Annotated[
        Path | None,
        typer.Option(
            help="a YAML list of settings of any modes, e.g. - {train.mode: iflood, train.b: 0.05} (a baseline is added); "
            "with --resume: the ones the sweep lacks are added"
        ),
    ] = None,
    seeds: Annotated[str, typer.Option(help="seeds per setting: a count (5 = seeds 1..5) or a list (1,2,7)")] = "3",
    search: Annotated[
        list[str] | None,
        typer.Option(help="model-based search (TPE) instead of a grid: b=0:0.6, ascent_lr=1e-6:1e-4:log (repeatable)"),
    ] = None,
    trials: Annotated[int, typer.Option(help="settings a --search may try; each runs every seed and scores their mean")] = 0,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="stop --search trials whose validation loss is worse than the median of earlier trials at the same step "
            "(Optuna's MedianPruner). Off by default: it judges a setting on one seed's early curve, which biases the "
            "seed statistics a sweep exists for",
        ),
    ] = False,
    workers: Annotated[int, typer.Option(help="runs at once on this machine: one GPU each, or a share of the CPU cores")] = 1,
    name: Annotated[str | None, typer.Option(help="sweep folder name [default: generated]")] = None,
    out: Annotated[Path, typer.Option(help="folder that holds sweep folders")] = Path("sweeps"),
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL shared by several machines, e.g. postgresql://user@host/db [default: a journal file in the sweep folder]")
    ] = None,
    study: Annotated[str | None, typer.Option(help="study name in --storage [default: the sweep's name]")] = None,
    worker: Annotated[bool, typer.Option("--worker", help="join a sweep as one more worker (with --storage and --study, or --resume)")] = False,
    resume: Annotated[Path | None, typer.Option(help="continue a sweep folder: queued and interrupted runs; completed runs never rerun")] = None,
    report: Annotated[Path | None, typer.Option(help="write a sweep folder's results (results.md, curves) and print them")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show each run's own progress bar")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no overall progress bar; the line of each finished run stays")] = False,
) -> None:
    """Run a grid of settings × seeds (or a TPE search) as ordinary runs, and report the grouped result."""
    from flood_cli.sweep.create import add_settings, create_sweep, read_spec, spec_from_study
    from flood_cli.sweep.driver import run_sweep, write_results
    from flood_cli.sweep.queue import requeue_failed
    from flood_cli.sweep.spec import human_bytes, parse_search, parse_seeds, read_settings
    from flood_cli.sweep.worker import WorkerInterrupted, work

    if workers < 1:
        raise FloodError(f"--workers {workers}: give at least 1")
    if quiet and verbose:
        raise FloodError("--quiet hides the progress bars that --verbose shows; pick one")
    if report is not None:
        spec = read_spec(report)
        _print_results(spec, write_results(spec))
        return
    if worker:
        _refuse_given(
            ctx, "--worker runs the trials of a sweep made already", WHAT_A_SWEEP_IS, "--report", "--workers",
            *(("--out", "--storage", "--study") if resume is not None else ()),
        )
        if resume is not None:
            spec = read_spec(resume)
        elif storage and study:
            spec = spec_from_study(storage, study)
            if out != Path("sweeps"):
                spec.folder = str(out.resolve())
        else:
            raise FloodError("--worker joins a sweep: give --storage URL and --study NAME (or --resume FOLDER)")
        _apply_thread_share()
        try:
            done = work(spec, log=lambda text: typer.echo(text), verbose=verbose)
        except WorkerInterrupted as exc:
            typer.echo(f"interrupted: {exc}", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        typer.echo(f"worker done: {done} trial(s)")
        return
    if resume is not None:
        _refuse_given(
            ctx, "--resume continues the saved sweep", tuple(flag for flag in WHAT_A_SWEEP_IS if flag != "--settings"),
            "--storage", "--study", "--out", "--report",
            fix=" (--settings FILE adds the settings it lists that the sweep lacks)",
        )
        spec = read_spec(resume)
        added = add_settings(spec, read_settings(settings)) if settings is not None else []
        retried = requeue_failed(spec)
        typer.echo(
            f"sweep {spec.name}: resuming {spec.describe()}"
            + (f"; added {len(added)} setting(s): {'; '.join(added)}" if added else "")
            + (f"; {retried} failed trial(s) queued again" if retried else "")
        )
    else:
        if config is None:
            raise FloodError("flood sweep needs --config FILE (the base config), --resume FOLDER or --report FOLDER")
        b_auto = _auto_b(b, mode)
        spec = create_sweep(
            config, mode, _sweep_axes(None if b_auto else b, lr, ascent_lr, set_ or []), parse_seeds(seeds),
            [parse_search(item) for item in search or []], trials, out, name, storage, study, prune,
            read_settings(settings) if settings is not None else None, b_auto,
        )
        typer.echo(f"sweep {spec.name}: {spec.describe()}, {workers} worker(s) → {spec.folder}")
        if storage:  # without its password (PGPASSWORD or ~/.pgpass give it there)
            typer.echo(f"other machines join with: flood sweep --storage {spec.storage} --study {spec.study} --worker")
    from flood_cli.core.progress import SweepProgress, make_sweep_progress

    progress = SweepProgress(live=False) if quiet else make_sweep_progress()
    outcome = run_sweep(spec, workers, verbose, progress.echo, progress)
    _print_results(spec, outcome.results)
    typer.echo(f"disk: {human_bytes(outcome.disk_bytes)} in {spec.folder}")
    if outcome.interrupted:
        if outcome.killed:
            typer.echo("interrupted: the workers were stopped at once; --resume continues each run from its last checkpoint", err=True)
        else:
            typer.echo("interrupted: runs in progress were checkpointed and queued again", err=True)
        typer.echo(f"resume with: flood sweep --resume {spec.folder}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    if outcome.worker_errors:
        raise FloodError(f"{'; '.join(outcome.worker_errors)}; fix the cause and run flood sweep --resume {spec.folder}")
    if outcome.failed:
        raise FloodError(
            f"{len(outcome.failed)} trial(s) failed (see the lines above and {spec.folder}/workers/); "
            f"fix the cause and run flood sweep --resume {spec.folder}"
        )


# The flags that say what a new sweep is: a saved one has them in its sweep.yaml.
WHAT_A_SWEEP_IS = ("--config", "--mode", "--b", "--lr", "--ascent-lr", "--set", "--settings", "--seeds", "--search", "--trials", "--prune", "--name")


def _refuse_given(ctx: typer.Context, why: str, flags: tuple[str, ...], *more: str, fix: str = "") -> None:
    """One line naming every flag of ``flags`` given on the command line (a flag left at
    its default is not given), which the sweep would otherwise ignore."""
    given = []
    for param in ctx.command.params:
        if any(opt in (*flags, *more) for opt in param.opts) and param.name is not None:
            source = ctx.get_parameter_source(param.name)  # an enum of the click that Typer runs on
            if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
                given.append(next(opt for opt in param.opts if opt.startswith("--")))
    if given:
        them = "it" if len(given) == 1 else "them"
        raise FloodError(f"{why}, so {', '.join(given)} cannot be given; drop {them}{fix}")


def _auto_b(b: str | None, mode: str | None) -> list[float] | None:
    """--b auto[:MULTIPLIERS] -> the multipliers (None for flood levels given as values);
    a malformed one, or one with a mode that has no flood level, exits 2 in one line."""
    from flood_cli.core.modes import FLOOD_LEVEL_MODES
    from flood_cli.sweep.auto_b import parse_auto_b

    try:
        multipliers = parse_auto_b(b)
    except FloodError as exc:
        _fail(str(exc), EXIT_USAGE)
    if multipliers is not None and mode is not None and mode not in FLOOD_LEVEL_MODES:
        _fail(f"--b auto places flood levels, which mode {mode} has none of; pass --mode {' or --mode '.join(FLOOD_LEVEL_MODES)}", EXIT_USAGE)
    return multipliers


def _sweep_axes(b: str | None, lr: str | None, ascent_lr: str | None, sets: list[str]) -> dict[str, list[Any]]:
    from flood_cli.config.load import parse_set_option
    from flood_cli.sweep.spec import FLAG_KEYS, parse_values

    axes: dict[str, list[Any]] = {}
    for flag, text in (("b", b), ("lr", lr), ("ascent_lr", ascent_lr)):
        if text is not None:
            axes[FLAG_KEYS[flag]] = parse_values(text, f"--{flag.replace('_', '-')}")
    for item in sets:
        key, _ = parse_set_option(item)
        axes[key] = parse_values(item.partition("=")[2], f"--set {key}")
    return axes


def _apply_thread_share() -> None:
    """A worker started by the sweep uses its share of the CPU cores (OMP_NUM_THREADS)."""
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        import torch

        torch.set_num_threads(int(threads))


def _print_results(spec: Any, written: list[Path]) -> None:
    from flood_cli.compare.command import compare_command

    if not written:
        typer.echo("no completed runs yet")
        return
    typer.echo(compare_command([spec.runs_dir]).text)
    typer.echo("results: " + ", ".join(str(path) for path in written))


EXIT_USAGE = 2  # click's code for a command line it cannot parse


def _click_error(name: str) -> type[Exception]:
    """A class of the click that Typer runs on (recent Typer vendors its own copy)."""
    return next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == name)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """The console script. Click's own usage errors (a flag value of the wrong type, an
    unknown flag or command) become one `error:` line too, instead of a framed block."""
    usage_error = _click_error("UsageError")
    try:
        # SIGTERM before the training loop installs its own handler (imports, data,
        # model) is an interruption like Ctrl-C: one line and exit 130, not a silent 143.
        signal.signal(signal.SIGTERM, _interrupt)
        command = typer.main.get_command(app)
        result = command.main(args=sys.argv[1:], prog_name="flood", standalone_mode=False)
    except usage_error as exc:
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":
            # `flood` alone: the error was made from the help page, and making it printed
            # the page already where rich formats help (then the message is empty).
            text = exc.format_message()  # type: ignore[attr-defined]
            if text.strip():
                typer.echo(text)
            sys.exit(EXIT_USAGE)
        message = " ".join(exc.format_message().split()).rstrip(".")  # type: ignore[attr-defined]
        typer.echo(f"error: {message}; see {ctx.command_path if ctx else 'flood'} --help", err=True)
        sys.exit(EXIT_USAGE)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("error: interrupted", err=True)
        result = EXIT_INTERRUPTED
    code = result if isinstance(result, int) else 0
    if code == EXIT_INTERRUPTED:
        # An interruption that passed through C code running Python (PyRun_String, as
        # some libraries do while importing) leaves CPython marked "KeyboardInterrupt
        # unhandled", and at exit it would kill itself with SIGINT (-2) instead of
        # returning 130. Everything is written by now (checkpoint, summary): exit as is.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
