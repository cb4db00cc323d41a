"""The one exception type for mistakes a user can fix; the CLI turns it into one line."""


class FloodError(Exception):
    """A user-facing error: bad config, missing file, unknown model…

    The message is shown as is, on one line, prefixed by ``error:``; it should say what
    is wrong and how to fix it.
    """


class RunInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint; it can be resumed."""

    def __init__(self, run_dir, step: int, signal_name: str, report: bool = True):
        super().__init__(f"stopped by {signal_name} at step {step}")
        self.run_dir = run_dir
        self.step = step
        self.signal_name = signal_name
        self.report = report  # False on all but the main process: one report per run
