"""Commands on files and the studio: open, screenshot, info, check, phantom, convert."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cmrstudio.cli.common import FrameOpt, LabelsOpt, SpacingOpt, parse_spacing
from cmrstudio.errors import CmrError


def launch(path: Optional[Path], case: Optional[str] = None, ready_file: Optional[Path] = None, quit_when_ready: bool = False) -> None:
    """Open the studio window (what ``cmrstudio`` without a subcommand and ``cmrstudio open`` do)."""
    try:
        from cmrstudio.gui.app import run
    except ImportError as exc:
        raise CmrError(
            f"The studio needs the GUI extras ({exc.name} is missing); install them with `pip install -e .[gui]`."
        ) from exc
    run(path, case=case, ready_file=ready_file, quit_when_ready=quit_when_ready)


def open_(
    path: Optional[Path] = typer.Argument(None, help="A scan, mask or dataset folder."),
    case: Optional[str] = typer.Option(None, help="Case to open from a dataset folder."),
    ready_file: Optional[Path] = typer.Option(None, "--ready-file", hidden=True, help="Write start-up timing here once the first frame is drawn."),
    quit_when_ready: bool = typer.Option(False, "--quit-when-ready", hidden=True, help="Close once the first frame is drawn (bench startup)."),
):
    """Open the studio on a file or dataset folder (the built-in sample case without one)."""
    launch(path, case, ready_file, quit_when_ready)


def screenshot(
    out: Path = typer.Option(Path("resources/screenshot.png"), "--out", help="PNG to write."),
    path: Optional[Path] = typer.Argument(None, help="What to open (the sample case without one)."),
    case: Optional[str] = typer.Option(None),
):
    """Open the studio, take a screenshot of the whole window, and close it (needs a display or Xvfb)."""
    from cmrstudio.gui.app import screenshot as take

    take(out, path, case)
    typer.echo(f"wrote {out}")


def info(
    path: Path = typer.Argument(..., help="A file (NIfTI, DICOM, MHA/NRRD, HDF5) or a dataset folder."),
    mask: Optional[Path] = typer.Option(None, help="A mask file that belongs to the image."),
    labels: Optional[str] = LabelsOpt,
    frame: Optional[int] = FrameOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    check: bool = typer.Option(False, "--check", help="Also run the anatomy checks on each mask."),
):
    """Print what a file or folder holds: cases, phases, vendors, shapes, spacing, labels."""
    from cmrstudio.anatomy import check_mask, summarise
    from cmrstudio.io import read_cases

    rows = []
    for c in read_cases(path, mask=mask, labels=labels, frame=frame):
        d = c.describe()
        if check and c.mask is not None:
            d["findings"] = summarise([f for f in check_mask(c.mask, c.spacing) if f.severity != "info"])
        rows.append(d)
    if not Path(path).is_dir():
        if as_json:
            typer.echo(json.dumps(rows[0], indent=2, default=str))
        else:
            _print_case(rows[0])
        return
    layouts = sorted({d.get("dataset") or d.get("reader") or "?" for d in rows})
    if as_json:
        typer.echo(json.dumps({"path": str(path), "layouts": layouts, "cases": rows}, indent=2, default=str))
        return
    typer.echo(f"{path}: {len(rows)} case(s), layout {', '.join(layouts)}")
    for d in rows:
        _print_case(d)


def _print_case(d: dict) -> None:
    sp = d["spacing_mm"]
    sp_txt = "unknown" if sp == "unknown" else "×".join(f"{v:g}" for v in sp) + " mm"
    labels = d.get("labels")
    lab_txt = ", ".join(f"{k} {v}" for k, v in labels.items() if k != "BG") if labels else "no mask"
    conv = f" [{d['label_convention']}]" if d.get("label_convention") else ""
    typer.echo(
        f"  {d['case']:<24} {d['phase'] or '-':<3} {d['vendor']:<8} shape {'×'.join(map(str, d['shape'])):<12} "
        f"spacing {sp_txt:<22} {'image+mask' if d['has_image'] and labels else 'image' if d['has_image'] else 'mask only'}; "
        f"labels: {lab_txt}{conv}"
    )
    for f in d.get("findings", []):
        typer.echo(f"      {f}")


def check(
    path: Path = typer.Argument(..., help="A mask file, or an image with --mask, or a dataset folder."),
    mask: Optional[Path] = typer.Option(None),
    labels: Optional[str] = LabelsOpt,
    spacing: Optional[str] = SpacingOpt,
):
    """Run the painter's anatomy checks (ring closed, RV outside, wall thickness, labels)."""
    from cmrstudio.anatomy import check_mask, summarise
    from cmrstudio.io import read_case

    c = read_case(path, mask=mask, labels=labels, spacing=parse_spacing(spacing))
    if c.mask is None:
        raise CmrError(f"{path} has no mask to check; give a mask file or --mask.")
    findings = check_mask(c.mask, c.spacing)
    for line in summarise(findings):
        typer.echo(line)
    if not [f for f in findings if f.severity != "info"]:
        typer.echo("no problems found")


def phantom(
    out: Path = typer.Option(..., "--out", help="Folder to write the cases into."),
    n: int = typer.Option(8, "--n", help="How many cases."),
    seed: int = typer.Option(0, help="First random seed; case i uses seed+i."),
    slices: int = typer.Option(8, help="Slices per volume, base to apex."),
    size: int = typer.Option(160, help="In-plane size in pixels."),
    spacing: float = typer.Option(1.5, help="In-plane pixel size in mm."),
    phase: str = typer.Option("both", help="ED, ES or both."),
    vendor: Optional[str] = typer.Option(None, help="Vendor style (siemens, philips, ge, canon); random when omitted."),
):
    """Write procedural phantom cases as NIfTI image/mask pairs with JSON sidecars."""
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.io import write_case

    if n < 1:
        raise CmrError(f"--n {n} must be at least 1.")
    phases = ["ED", "ES"] if phase.lower() == "both" else [phase.upper()]
    if any(p not in ("ED", "ES") for p in phases):
        raise CmrError(f"--phase {phase!r} must be ED, ES or both.")
    written = 0
    for i in range(n):
        for ph in phases:
            c = phantom_case(seed + i, n_slices=slices, shape=(size, size), spacing=spacing, phase=ph, vendor=vendor)
            write_case(c, out)
            written += 1
    typer.echo(f"wrote {written} phantom volume(s) to {out}")


def convert(
    path: Path = typer.Argument(..., help="A file or dataset folder."),
    out: Path = typer.Option(..., "--out", help="Folder for <case>_image.nii.gz, <case>_mask.nii.gz and <case>.json."),
    case: Optional[str] = typer.Option(None, help="Only this case (prefix match) from a folder."),
    mask: Optional[Path] = typer.Option(None),
    labels: Optional[str] = LabelsOpt,
    frame: Optional[int] = FrameOpt,
    spacing: Optional[str] = SpacingOpt,
    int16: bool = typer.Option(False, "--int16", help="Store the image as int16 (for integer scanner data)."),
):
    """Convert scans into the cmrstudio layout (NIfTI + canonical mask + JSON provenance)."""
    import numpy as np

    from cmrstudio.io import read_cases, write_case

    cases = read_cases(path, case=case, mask=mask, labels=labels, frame=frame, spacing=parse_spacing(spacing))
    p = Path(path)
    ids = [c.case_id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise CmrError(f"{p} holds several cases named {dup[0]!r}; convert them one at a time with --case.")
    for c in cases:
        write_case(c, out, image_dtype=np.int16 if int16 else np.float32)
    typer.echo(f"wrote {len(cases)} case(s) to {out}")

