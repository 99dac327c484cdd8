"""Commands on models: render (a mask into an image) and models (what is installed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from cmrstudio.cli.common import FrameOpt, LabelsOpt, LayoutPriorOpt, SpacingOpt, parse_spacing
from cmrstudio.errors import CmrError
from cmrstudio.record import sampler_of
from cmrstudio.settings import DEFAULT_MARGIN_MM, band_mm


def models(as_json: bool = typer.Option(False, "--json", help="Print JSON."), verify_sums: bool = typer.Option(False, "--verify", help="Check every weights file against its card's sha256.")):
    """List installed models: shipped, the user's folder and plugins."""
    from cmrstudio.models.checkpoint import verify
    from cmrstudio.models.registry import list_models, user_dir

    problems: list[str] = []
    found = list_models(problems=problems)
    rows = []
    for m in found:
        row = m.summary()
        if verify_sums:
            try:
                verify(m)
                row["checksum"] = "ok"
            except CmrError as exc:
                row["checksum"] = exc.message
        rows.append(row)
    if as_json:
        typer.echo(json.dumps({"models": rows, "problems": problems, "user_dir": str(user_dir())}, indent=2))
        return
    if not rows:
        typer.echo(f"No models installed (shipped: resources/models; yours: {user_dir()}).")
    for r in rows:
        extra = f"  checksum {r['checksum']}" if "checksum" in r else ""
        res = f"{r['resolution']}px" if r["resolution"] else "-"
        typer.echo(f"{r['name']:<20} {r['kind']:<10} {r['origin']:<8} {r['size_mb']:>6.1f} MB  {res:>5}  "
                   f"vendors {','.join(r['vendors_trained'])}  {r['iterations']} it{extra}")
    for p in problems:
        typer.echo(f"warning: {p}", err=True)


def render(
    mask: Path = typer.Argument(..., help="Mask file (any supported format) or dataset folder / HDF5 file with labels."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output image: .nii.gz, .nii, .mha or .nrrd."),
    case_out: Optional[Path] = typer.Option(None, "--case-out", help="Also (or instead) write a case there: image, mask and a sidecar saying how it "
                                                                    "was made, which `cmrstudio export` takes directly."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name or card path: spade (default, live), diffusion or flow (HQ), or any installed model."),
    context: Optional[Path] = typer.Option(None, "--context", help="Render in this patient: the scan (file or dataset folder) the mask was painted on; "
                                                                  "its own pixels stay outside a margin around the heart. Without it the render is fully synthetic."),
    context_case: Optional[str] = typer.Option(None, "--context-case", help="The case in a --context dataset folder (default: --case)."),
    margin: float = typer.Option(DEFAULT_MARGIN_MM, "--margin", help="In this patient: repaint within this many mm of every label that differs from the scan's own (5 mm, or this when smaller, around an outline left as it was)."),
    vendor: Optional[str] = typer.Option(None, "--vendor", help="Scanner style: siemens, philips, ge, canon or unknown (default: the context scan's, else unknown)."),
    seed: int = typer.Option(0, "--seed", help="Style seed; the same seed gives the same image."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps of a diffusion (e.g. 25) or flow (e.g. 4) model; the card's default when omitted."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale of a diffusion or flow model (1 = none)."),
    solver: Optional[str] = typer.Option(None, "--solver", help="ODE solver of a flow model: euler or heun."),
    shifts: Optional[int] = typer.Option(None, "--shifts", help="Flow/diffusion: 4 averages each step over the 4 offsets of the "
                                         "network's 2-px patch grid (no patch grid, 4x the time), 1 one pass; default: the card's."),
    no_spectrum_gain: bool = typer.Option(False, "--no-spectrum-gain", help="Flow/diffusion: without the radial spectrum gain the "
                                          "card may have (cmrstudio train spectrum-gain)."),
    labels: Optional[str] = LabelsOpt,
    frame: Optional[int] = FrameOpt,
    spacing: Optional[str] = SpacingOpt,
    case: Optional[str] = typer.Option(None, "--case", help="Case to take the mask from, in a dataset folder."),
    layout_prior: Optional[str] = LayoutPriorOpt,
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or mps (automatic when omitted)."),
):
    """Render every slice of a mask into an image with the mask's own shape and geometry: fully synthetic, or in a patient's own scan."""
    import time

    from cmrstudio.engine.factory import generator_kinds, open_renderer
    from cmrstudio.io import read_case, read_mask, write_volume
    from cmrstudio.models.registry import get_model

    if out is None and case_out is None:
        raise CmrError("Give --out IMAGE (the rendered volume) and/or --case-out DIR (image, mask and sidecar for export).")
    info = get_model(model, kind=generator_kinds())
    hq = {k: v for k, v in (("steps", steps), ("guidance", guidance), ("solver", solver), ("shifts", shifts),
                            ("spectrum_gain", False if no_spectrum_gain else None)) if v is not None}
    c = read_mask(mask, labels=labels, frame=frame, spacing=parse_spacing(spacing), case=case)  # bad input first, before the model loads
    scan = read_case(context, frame=frame, spacing=parse_spacing(spacing), case=context_case or case) if context is not None else None
    r = open_renderer(info, device=device, **hq, **({"layout_prior": layout_prior} if layout_prior else {}))
    image = heart = None
    if scan is not None:
        if scan.image is None:
            raise CmrError(f"{context} holds no image to render into; give the scan the mask was painted on.")
        if scan.shape != c.shape:
            raise CmrError(f"The mask {mask} is {'×'.join(map(str, c.shape))} but the scan {context} is {'×'.join(map(str, scan.shape))}; "
                           "give the mask that was painted on this scan.")
        if not r.scene:
            raise CmrError(f"The model '{r.name}' renders the heart crop only and cannot render into a patient's scan; "
                           "use a scene model (spade-cmr, flow-cmr-fine-2step, flow-cmr) or drop --context.")
        image = scan.image
        if scan.mask is not None:
            heart = scan.mask
        else:  # the scan's own heart must be repainted too, or it would show beside the painted one
            from cmrstudio.case import Case
            from cmrstudio.engine.segment import segment_scan

            heart = segment_scan(Case(scan.image, c.mask, scan.affine), device=device)
            typer.echo(f"note: {context} has no segmentation; its own heart was found with the bundled segmenter and is repainted too.", err=True)
        vendor = vendor or scan.vendor
        c.affine = scan.affine if scan.affine is not None else c.affine
    vendor = vendor or "unknown"
    _, _, note = r.resolve_vendor(vendor)
    if note:
        typer.echo(f"note: {note}", err=True)
    if c.spacing is None:
        typer.echo(f"note: {mask} stores no voxel spacing: the frame is sized to the heart and the output's geometry says 1 mm pixels, "
                   "which is not known (give --spacing z,y,x to write the true one).", err=True)
    t0 = time.perf_counter()
    img, fr = r.render_volume(c.mask, c.spacing, vendor=vendor, seed=seed, image=image, heart=heart,
                              margin_mm=margin if image is not None else None)
    secs = time.perf_counter() - t0
    written = []
    if out is not None:
        written.append(str(write_volume(out, img, c.affine, dtype=np.float32)))
    if case_out is not None:
        from cmrstudio.engine.scene import SliceContext
        from cmrstudio.io import write_case
        from cmrstudio.record import make_record, render_case

        ctx = SliceContext("in-patient", image[0], None if heart is None else heart[0], margin) if image is not None else None
        record = make_record(r, seed, r.resolve_vendor(vendor)[1], ctx, seconds=secs)
        cid = case_out_name(c.case_id, seed)
        write_case(render_case(img, c.mask, c.affine, fr, record, cid, mask_source=mask_source_of(mask, c)), case_out, name=cid)
        written.append(f"{case_out}/{cid}_image.nii.gz (+ mask, sidecar)")
    fov = f"{fr.spacing_mm * fr.size:.0f} mm" if fr.spacing_mm else "heart-sized"
    how = (f", {r.steps} steps ({sampler_of(r)}), guidance {r.guidance:g}"
           if hasattr(r, "solver") else "")
    where = (f"in this patient ({context}; {margin:g} mm around what differs from its own heart repainted, "
             f"{band_mm(margin, heart is not None):g} mm around the rest, "
             "derived from a patient scan)" if image is not None
             else f"fully synthetic, the whole field of view (tissue classes from {r.layout_prior_name()})" if r.scene else f"fully synthetic, {fov} heart frame")
    typer.echo(f"Wrote {' and '.join(written)}: {img.shape[0]} slices of {img.shape[1]}×{img.shape[2]}, model {r.name} ({r.kind}{how}), "
               f"vendor {vendor}, seed {seed}, {where}, {secs:.1f} s.")



def mask_source_of(mask: Path, c) -> dict | None:
    """Where a rendered mask came from, for the case's sidecar (an export compares the mask with that scan's own
    segmentation to tell a patient's segmentation from a painted one): a case of a dataset folder (``--case``), or a
    mask file that is a case of the folder it sits in (a phantom is recorded as such). A loose mask file records
    nothing: its origin stays unknown, and exports say so."""
    from cmrstudio.io import scan

    mask = Path(mask).expanduser()
    if mask.is_dir():  # --case in a dataset folder: the case read is the source
        src, case_id, phase, want = c.source, c.case_id, c.phase, mask.resolve()
    else:
        try:
            refs = scan(mask.parent)
        except Exception:
            return None
        want = mask.resolve()
        ref = next((r for r in refs if r.mask is not None and Path(r.mask).resolve() == want), None)
        if ref is None:
            return None
        try:
            src = ref.load().source
        except Exception:
            return None
        case_id, phase = ref.case_id, ref.phase
    origin = src.get("origin") if isinstance(src.get("origin"), dict) else {}
    # the dataset the case came from: a reader's own (mnms, acdc, ...) or the one a cmrstudio folder records; a bare
    # *_mask.nii.gz in a cmrstudio folder records none (it may be painted: comparing it with itself would prove nothing)
    dataset = origin.get("dataset") or (src.get("dataset") if src.get("dataset") not in (None, "cmrstudio") else None)
    if not dataset or dataset == "cmrstudio-render":  # unknown, or the mask of an earlier render (its origin is not recorded here)
        return None
    return {"dataset": dataset, "case_id": case_id, "phase": phase, "path": str(want)}


def case_out_name(case_id: str, seed: int) -> str:
    """A file-name-safe id for a rendered case: the mask's case id and the seed."""
    import re

    base = re.sub(r"[^A-Za-z0-9_-]+", "_", case_id).strip("_") or "render"
    return f"{base[:48]}_s{int(seed)}"
