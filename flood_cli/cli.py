"""The `flood` command line: thin commands that validate input and delegate.

Nothing heavy is imported here at module level (no torch, transformers or datasets),
so `flood --help` and `flood compare` answer at once.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from flood_cli.errors import FloodError, RunInterrupted

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Fine-tune BERT classifiers with baseline training, flooding or alternating descent/ascent, and compare the runs.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C
_debug = {"on": False}


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="show the full traceback of errors")] = False,
) -> None:
    _debug["on"] = debug


def _fail(message: str, code: int = EXIT_ERROR) -> None:
    typer.echo(f"error: {' '.join(message.split())}", err=True)
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
                raise typer.Exit(EXIT_INTERRUPTED)
            typer.echo(f"interrupted: {exc}; checkpoint written", err=True)
            if exc.run_dir is not None:
                typer.echo(f"resume with: flood train --resume {exc.run_dir}", err=True)
            raise typer.Exit(EXIT_INTERRUPTED)
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
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config, e.g. configs/tiny.yaml")] = None,
    mode: Annotated[Optional[str], typer.Option(help="baseline | flooding | alternate")] = None,
    b: Annotated[Optional[float], typer.Option("--b", help="flood level; alone, it switches the mode to flooding")] = None,
    lr: Annotated[Optional[float], typer.Option(help="learning rate (descent rate in mode alternate)")] = None,
    ascent_lr: Annotated[Optional[float], typer.Option(help="ascent learning rate (mode alternate)")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="number of epochs")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed (model init, dropout, data order)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="folder that holds run folders [default: runs]")] = None,
    name: Annotated[Optional[str], typer.Option(help="run folder name [default: generated]")] = None,
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="override any config key: --set train.batch_size=16 (repeatable)")
    ] = None,
    resume: Annotated[
        Optional[Path], typer.Option(help="continue a stopped run from its last checkpoint, with its saved config")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Fine-tune a classifier and write metrics.csv and summary.json to a new run folder."""
    from flood_cli.config import MODES, load_config

    given = {
        "--config": config, "--mode": mode, "--b": b, "--lr": lr, "--ascent-lr": ascent_lr, "--epochs": epochs,
        "--seed": seed, "--out": out, "--name": name, "--set": set_ or None,
    }
    if resume is not None:
        changed = [flag for flag, value in given.items() if value is not None]
        if changed:
            raise FloodError(
                f"--resume continues the saved experiment, so {changed[0]} cannot be changed; "
                "drop it, or start a new run with --config"
            )
        from flood_cli.train import resume_training

        _train_and_report(lambda reporter: resume_training(resume, reporter=reporter), quiet)
        return
    if config is None:
        raise FloodError("flood train needs --config FILE (e.g. configs/tiny.yaml) or --resume RUN_FOLDER")
    if mode is not None and mode not in MODES:
        raise FloodError(f"--mode {mode!r} is not a mode; use {', '.join(MODES[:-1])} or {MODES[-1]}")
    flags = {
        "train.mode": mode,
        "train.b": b,
        "train.lr": lr,
        "train.ascent_lr": ascent_lr,
        "train.epochs": epochs,
        "train.seed": seed,
        "output.dir": str(out) if out is not None else None,
        "output.name": name,
    }
    overrides = {key: value for key, value in flags.items() if value is not None}
    cfg = load_config(config, overrides, sets=set_ or [])

    from flood_cli.train import run_training

    _train_and_report(lambda reporter: run_training(cfg, reporter=reporter), quiet)


def _train_and_report(job: Any, quiet: bool) -> None:
    """Run ``job(reporter)`` under a progress bar (or none) and print where its results are."""
    from flood_cli.progress import make_reporter

    with make_reporter(quiet=quiet) as reporter:
        result = job(reporter)
    if not result.is_main_process:  # under `accelerate launch`, one process reports
        return
    typer.echo(f"run folder: {result.run_dir}")
    typer.echo(f"best val_loss: {result.best_val_loss:.6f} (epoch {result.best_epoch:g}, step {result.best_step})")


@app.command()
@user_errors
def compare(
    paths: Annotated[list[Path], typer.Argument(help="run folders, or folders that hold runs")],
    plot: Annotated[Optional[Path], typer.Option(help="write loss/accuracy curves to this image (.png, .pdf, .svg)")] = None,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="write the table to this CSV file")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="print the table as Markdown")] = False,
    json_: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
    x: Annotated[str, typer.Option(help="x axis of the plot: epoch | step")] = "epoch",
) -> None:
    """Put runs side by side: best validation loss, seed noise, loss-up-accuracy-up evaluations."""
    from flood_cli.compare import compare_command

    output = compare_command(paths, plot=plot, csv_path=csv, markdown=markdown, as_json=json_, x_axis=x)
    for warning in output.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(output.text)


EXIT_USAGE = 2  # click's code for a command line it cannot parse


def _click_error(name: str) -> type[Exception]:
    """A class of the click that Typer runs on (recent Typer vendors its own copy)."""
    return next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == name)


def main() -> None:
    """The console script. Click's own usage errors (a flag value of the wrong type, an
    unknown flag or command) become one `error:` line too, instead of a framed block."""
    usage_error = _click_error("UsageError")
    command = typer.main.get_command(app)
    try:
        result = command.main(args=sys.argv[1:], prog_name="flood", standalone_mode=False)
    except usage_error as exc:
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            sys.exit(EXIT_USAGE)
        message = " ".join(exc.format_message().split()).rstrip(".")  # type: ignore[attr-defined]
        typer.echo(f"error: {message}; see {ctx.command_path if ctx else 'flood'} --help", err=True)
        sys.exit(EXIT_USAGE)
    except typer.Abort:
        typer.echo("error: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
