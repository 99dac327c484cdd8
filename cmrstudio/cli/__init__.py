"""The ``cmrstudio`` command. Run without a subcommand it opens the studio.

The root app and ``main`` live here; the commands live one module per group: :mod:`.data` (open, screenshot, info,
check, phantom, convert), :mod:`.render` (models, render), :mod:`.export`, :mod:`.train`, :mod:`.study`,
:mod:`.bench`, :mod:`.evaluate`, :mod:`.doctor`, :mod:`.serve` (the engine as a server) and :mod:`.generate` (synthetic datasets from a recipe); shared options and argument checks in :mod:`.common`. Heavy modules (torch,
napari, the engine, training, evaluation) are imported inside the commands, so ``cmrstudio --help`` stays fast.
"""

from __future__ import annotations

import functools
import sys
import warnings

import typer

from cmrstudio import __version__
from cmrstudio.cli import data, doctor, export, generate, render, serve
from cmrstudio.cli.bench import bench_app
from cmrstudio.cli.evaluate import evaluate_app
from cmrstudio.cli.study import study_app
from cmrstudio.cli.train import train_app
from cmrstudio.errors import CmrError, CmrWarning, one_line

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    invoke_without_command=True,
    help="cmrstudio: paint cardiac anatomy, synthesise short-axis MRI, curate, export and evaluate.",
)


@app.callback()
def _root(ctx: typer.Context, version: bool = typer.Option(False, "--version", help="Print the version and exit.")):
    if version:
        typer.echo(f"cmrstudio {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        data.launch(None)


# The order here is the order of `cmrstudio --help`: single commands first, then the groups.
app.command("open")(data.open_)
app.command()(data.screenshot)
app.command()(data.info)
app.command()(data.check)
app.command()(data.phantom)
app.command()(data.convert)
app.command()(render.models)
app.command()(render.render)
app.command("export")(export.export_cmd)
app.command()(doctor.doctor)
app.command()(serve.serve)
app.command()(generate.generate)
app.add_typer(train_app, name="train")
app.add_typer(study_app, name="study")
app.add_typer(bench_app, name="bench")
app.add_typer(evaluate_app, name="evaluate")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A :class:`CmrWarning` is a sentence for the user: ``warning: ...`` on stderr, no file or line number."""
    if issubclass(category, CmrWarning):
        typer.echo(f"warning: {one_line(str(message))}", err=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def _tolerant_streams() -> None:
    """A file name that is not valid UTF-8 must not turn a printed line into a traceback."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if getattr(stream, "errors", None) == "strict":
                stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass


def main(argv: list[str] | None = None) -> None:
    _tolerant_streams()
    with warnings.catch_warnings():
        warnings.simplefilter("always", CmrWarning)  # the same sentence for two files is two warnings
        warnings.showwarning = _show_warning
        _main(argv)


@functools.lru_cache(maxsize=1)
def _command():
    """The click command typer builds from ``app``: built once per process (about 50 ms of reading every command's
    signature), not at each call of :func:`main` (the studio, the tests and scripts call it in-process)."""
    return typer.main.get_command(app)


def _main(argv: list[str] | None) -> None:
    try:
        rc = _command().main(args=argv, standalone_mode=False, prog_name="cmrstudio")
        if isinstance(rc, int) and rc:  # typer.Exit(n) inside a command comes back as a return value here
            sys.exit(rc)
    except CmrError as exc:
        typer.echo(f"cmrstudio: {exc.message}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:  # usage errors (typer may vendor its own click)
        if any(c.__name__ == "ClickException" for c in type(exc).__mro__) and hasattr(exc, "show"):
            exc.show()
            sys.exit(exc.exit_code)
        raise
