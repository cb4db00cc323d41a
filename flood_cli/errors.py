"""The one exception type for mistakes a user can fix; the CLI turns it into one line."""


class FloodError(Exception):
    """A user-facing error: bad config, missing file, unknown model…

    The message is shown as is, on one line, prefixed by ``error:``; it should say what
    is wrong and how to fix it.
    """
