"""``cmrstudio serve``: the engine as a server (issue 20; being written)."""

from __future__ import annotations

import typer


def serve():
    """Serve the engine over HTTP and WebSocket (not finished yet)."""
    raise typer.Exit(2)
