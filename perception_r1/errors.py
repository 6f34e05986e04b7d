"""Exceptions shared across the package's edges."""


class CommandError(Exception):
    """A user-facing error: the CLI prints it without a traceback and exits with ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code
