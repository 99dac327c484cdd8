"""``cmrstudio generate``: a synthetic dataset from a recipe (issue 20; being written)."""

from __future__ import annotations

import typer


def generate():
    """Generate a synthetic dataset from a recipe (not finished yet)."""
    raise typer.Exit(2)
