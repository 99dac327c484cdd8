"""Errors meant for people.

A :class:`CmrError` carries one sentence that names the file or value at fault
and says what to do. The CLI prints it without a traceback; the GUI shows it in
the window.
"""


class CmrError(Exception):
    """A problem with the user's input, phrased for the user."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message
