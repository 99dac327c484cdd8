"""Errors meant for people.

A :class:`CmrError` carries one sentence that names the file or value at fault
and says what to do. The CLI prints it without a traceback; the GUI shows it in
the window.
"""


def one_line(text: str) -> str:
    """A sentence stays one line, whatever it quotes: line breaks and other control characters in a file name
    are shown escaped (``\\n``), never printed."""
    text = str(text)
    if not any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        return text
    return "".join(ch.encode("unicode_escape").decode("ascii") if ord(ch) < 32 or ord(ch) == 127 else ch for ch in text)


class CmrError(Exception):
    """A problem with the user's input, phrased for the user."""

    def __init__(self, message: str):
        message = one_line(message)
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message


class CmrWarning(UserWarning):
    """Something readable that looks wrong, phrased for the user: one sentence naming the file, what was
    found and what was assumed instead (NaN pixels replaced, a spacing that is missing or implausible, a
    gzip trailer missing). The assumption is also recorded in the case's provenance
    (``case.source["assumptions"]``); the CLI prints these as ``warning: ...`` lines."""
