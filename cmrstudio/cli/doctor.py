"""``cmrstudio doctor``: check this installation and say what is wrong, one sentence each."""

from __future__ import annotations

import json

import typer


def doctor(as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON.")):
    """Check the installation: Python, torch, Qt/napari and OpenGL, models and their checksums, settings, the last
    project and free disk space. Exit code 0 when nothing is wrong, 1 otherwise."""
    from cmrstudio.doctor import run_checks

    findings = run_checks()
    problems = [f for f in findings if f.level == "problem"]
    if as_json:
        typer.echo(json.dumps({"ok": not problems, "findings": [f.to_dict() for f in findings]}, indent=2))
    else:
        for f in findings:
            typer.echo(f"{f.level:<8} {f.message}")
        typer.echo(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found." if problems else "Nothing is wrong.")
    if problems:
        raise typer.Exit(1)
