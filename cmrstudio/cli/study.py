"""``cmrstudio study``: blinded real-vs-synthetic reader studies (create, read, report, machine)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

study_app = typer.Typer(help="Blinded real-vs-synthetic reader studies: create, read, report.", no_args_is_help=True)


@study_app.command("create")
def study_create(
    out: Path = typer.Argument(..., help="The study folder to create."),
    real: list[Path] = typer.Option([], "--real", help="Real scans with masks (files or dataset folders); repeatable."),
    synthetic: list[Path] = typer.Option([], "--synthetic", help="A studio project, a folder of renders or an export; repeatable."),
    n: Optional[int] = typer.Option(None, "--n", help="Slices of each kind (default: as many as balance allows)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the selection, the pairs and every reader's order."),
    mode: str = typer.Option("both", "--mode", help="single (real or synthetic?), 2afc (which is real?) or both."),
    free_text: bool = typer.Option(False, "--free-text", help="Offer an optional comment box."),
    fill: bool = typer.Option(False, "--fill", help="Also pair slices across vendor/phase strata (then vendor or phase may hint at the answer)."),
):
    """Design a study: real and synthetic heart slices matched by vendor and phase, pairs for 2AFC; no patient is
    shown as both real and synthetic."""
    from cmrstudio.study.design import create_study

    st = create_study(real, synthetic, out, n=n, seed=seed, mode=mode, free_text=free_text, fill=fill)
    n_real = sum(it.kind == "real" for it in st.items)
    strata = sorted({(it.vendor, it.phase or "-") for it in st.items})
    typer.echo(f"study {st.folder}: {n_real} real + {len(st.items) - n_real} synthetic slices, {len(st.pairs)} 2AFC pairs, "
               f"mode {st.mode}, seed {st.seed}; strata {', '.join('/'.join(s) for s in strata)}")
    excluded = st.selection.get("excluded_real_slices_same_patient", 0)
    if excluded:
        typer.echo(f"left out {excluded} real slices of patients whose masks made synthetic slices")


@study_app.command("read")
def study_read(
    study: Path = typer.Argument(..., help="The study folder."),
    reader: str = typer.Option(..., "--reader", help="Your name or code."),
    resume: bool = typer.Option(False, "--resume", help="Continue as a reader who has already started."),
):
    """Read the study in the blinded reading view (keys: R/S or arrows, then 1–5; P pause; Esc close)."""
    from cmrstudio.gui.reader import run_reader

    n = run_reader(study, reader, resume=resume)
    typer.echo(f"{reader}: {n} answers saved in {study}")


@study_app.command("report")
def study_report(
    study: Path = typer.Argument(..., help="The study folder."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default: STUDY/report)."),
):
    """Score every reader and all pooled (accuracy, sensitivity, specificity with exact CIs, binomial test, ROC AUC,
    reading time, Fleiss and Cohen kappa) into report.html, answers.csv and scores.json."""
    from cmrstudio.study.report import report_study

    paths = report_study(study, out)
    typer.echo(f"report: {paths['html']} (answers: {paths['csv']}, scores: {paths['json']})")


@study_app.command("machine")
def study_machine(
    study: Path = typer.Argument(..., help="The study folder."),
    train: list[Path] = typer.Option([], "--train", help="Real scans with masks to train on (never the study's own cases); repeatable."),
    model: Optional[str] = typer.Option(None, "--model", help="The generator that makes the synthetic training images (default: the live model; any installed generator)."),
    steps: int = typer.Option(300, "--steps", help="Training steps."),
    seed: int = typer.Option(0, "--seed"),
):
    """Add a machine reader: a real-vs-synthetic classifier trained on other cases answers the study's questions."""
    from cmrstudio.study.machine_reader import add_machine_reader

    res = add_machine_reader(study, train, model=model, steps=steps, seed=seed, progress=typer.echo)
    typer.echo(res)

