"""The one exception type for mistakes a user can fix; the CLI turns it into one line."""

import reprlib


class FloodError(Exception):
    """A user-facing error: bad config, missing file, unknown model…

    The message is shown as is, on one line, prefixed by ``error:``; it should say what
    is wrong and how to fix it.
    """


class UnresumableRun(FloodError):
    """A run whose checkpoint cannot be used (damaged, or never written although rows
    were): ``problem`` says what is wrong; the message adds what a user of flood train
    does about it (a sweep says its own)."""

    def __init__(self, problem: str, advice: str):
        super().__init__(f"{problem}; {advice}")
        self.problem = problem


class RunInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint; it can be resumed."""

    def __init__(self, run_dir, step: int, signal_name: str, report: bool = True):
        super().__init__(f"stopped by {signal_name} at step {step}")
        self.run_dir = run_dir
        self.step = step
        self.signal_name = signal_name
        self.report = report  # False on all but the main process: one report per run


# ---------------------------------------------------------------------------
# Values echoed in messages: one line, and short whatever the input holds.

SHOWN_CHARACTERS = 80


def escaped(text: str) -> str:
    """``text`` with line breaks, tabs and other control or invisible format characters
    written as Python escapes (``\\n``, ``\\x1b``, ``\\u2028``): it prints on one line and
    cannot move a terminal's cursor or change its colours."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def shown(text: str, limit: int = SHOWN_CHARACTERS) -> str:
    """``text`` on one line and at most ``limit`` characters: line breaks and other
    control characters escaped (see `escaped`), the middle cut out with an ellipsis."""
    if len(text) > 4 * limit:  # what is cut out need not be escaped first
        text = text[: 2 * limit] + text[-2 * limit :]
    text = escaped(text)
    if len(text) <= limit:
        return text
    tail = (limit - 1) // 3
    return text[: limit - 1 - tail] + "…" + text[len(text) - tail :]


def shown_repr(value: object, limit: int = SHOWN_CHARACTERS) -> str:
    """repr(value) cut to ``limit`` characters, computed in bounded time even for a
    huge or self-containing list (repr of a short value is unchanged)."""
    try:
        text = _BOUNDED_REPR.repr(value)
    except ValueError:  # an int past Python's 4,300-digit limit for str()
        text = f"<a {type(value).__name__}>"
    return shown(text, limit)


def _bounded_repr() -> reprlib.Repr:
    bounded = reprlib.Repr()
    bounded.maxlevel = 3
    bounded.maxlist = bounded.maxtuple = bounded.maxdict = bounded.maxset = bounded.maxfrozenset = bounded.maxdeque = 12
    bounded.maxstring = bounded.maxother = 4 * SHOWN_CHARACTERS
    bounded.maxlong = 2 * SHOWN_CHARACTERS
    return bounded


_BOUNDED_REPR = _bounded_repr()


class RunPruned(Exception):
    """A sweep's pruner stopped the run early: its summary says status "pruned"."""

    run_status = "pruned"
