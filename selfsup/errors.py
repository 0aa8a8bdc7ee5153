"""The one exception type that the command line turns into a one-line message."""


class SelfSupError(Exception):
    """A user-facing error: bad input, a wrong option, a missing file.

    The CLI prints ``error: <message>`` and exits with status 2 instead of a traceback.
    The message must name the file or option at fault.
    """
