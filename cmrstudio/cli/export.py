"""The export command: kept renders in formats other tools read directly."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cmrstudio.errors import CmrError


def export_cmd(
    source: Optional[Path] = typer.Argument(None, help="A studio project folder, or a folder of saved renders."),
    dest: Optional[Path] = typer.Argument(None, help="The export folder to create."),
    fmt: str = typer.Option("nifti", "--format", help="nifti (image + mask + JSON), nnunet (nnU-Net v2 raw dataset), dicom or bids (BIDS derivatives)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DEST if it exists (the old export is removed only once the new one is complete)."),
    with_real: list[Path] = typer.Option([], "--with-real", help="nnunet: also add the real cases (image + mask) of this folder; repeatable."),
    dataset_id: int = typer.Option(501, "--dataset-id", help="nnunet: the dataset number (DatasetNNN_Name)."),
    name: str = typer.Option("SyntheticCMR", "--name", help="nnunet: the dataset name."),
    min_rating: Optional[int] = typer.Option(None, "--min-rating", help="Only renders rated at least this (1–5)."),
    verify_dest: Optional[Path] = typer.Option(None, "--verify", help="Check an export against its manifest instead."),
    anonymous_only: bool = typer.Option(False, "--anonymous-only", help="Only fully synthetic renders: leave out (and name) those rendered in a patient's "
                                                                        "own scan, those whose mask is the patient's own segmentation and those whose mask's origin is not recorded."),
    keep_source_ids: bool = typer.Option(False, "--keep-source-ids", help="Write the source scans' case ids and paths, the project's path and the "
                                                                          "renders' own names (by default a source is described by dataset, case hash and slice)."),
):
    """Export kept renders (a studio project's gallery or a folder of renders) in formats other tools read directly."""
    from cmrstudio.export import export, verify

    if verify_dest is not None:
        problems = verify(verify_dest)
        for p in problems:
            typer.echo(f"cmrstudio: {p}", err=True)
        if problems:
            raise typer.Exit(1)
        typer.echo(f"{verify_dest}: every file matches its manifest.")
        return
    if source is None or dest is None:
        raise CmrError("Give SOURCE and DEST (cmrstudio export --format nifti PROJECT OUT), or --verify DEST.")
    if min_rating is not None and not 1 <= min_rating <= 5:
        raise CmrError(f"--min-rating {min_rating} must be 1–5.")
    rep = export(source, dest, fmt=fmt, overwrite=overwrite, with_real=list(with_real), dataset_id=dataset_id, name=name,
                 min_rating=min_rating, progress=lambda m: typer.echo(m), anonymous_only=anonymous_only,
                 keep_source_ids=keep_source_ids)
    typer.echo(f"exported {len(rep.exported)} rendered case{'s' if len(rep.exported) != 1 else ''}"
               + (f" and {len(rep.real)} real" if rep.real else "") + f" as {fmt} to {rep.dest} ({rep.files} files, manifest.json)")
    for sk in rep.skipped:
        typer.echo(f"cmrstudio: skipped: {sk}", err=True)
    if rep.skipped:
        raise typer.Exit(1)

