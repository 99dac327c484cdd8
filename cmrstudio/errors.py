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


class CmrWarning(UserWarning):
    """Something readable that looks wrong, phrased for the user: one sentence naming the file, what was
    found and what was assumed instead (NaN pixels replaced, a spacing that is missing or implausible, a
    gzip trailer missing). The assumption is also recorded in the case's provenance
    (``case.source["assumptions"]``); the CLI prints these as ``warning: ...`` lines."""
