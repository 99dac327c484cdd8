"""The ``cmrstudio`` command. Run without a subcommand it opens the studio."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from cmrstudio import __version__
from cmrstudio.errors import CmrError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    invoke_without_command=True,
    help="cmrstudio: paint cardiac anatomy, synthesise short-axis MRI, curate, export and evaluate.",
)

LabelsOpt = typer.Option(None, "--labels", help="Mask label convention: canonical, mnms or acdc (guessed from file names when omitted).")
FrameOpt = typer.Option(None, "--frame", help="Frame (time point) of a 4D cine, from 0.")
SpacingOpt = typer.Option(None, "--spacing", help="Voxel size 'z,y,x' in mm, used only when the file stores none.")


def _check_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) or ".." in name:
        raise CmrError(f"--name {name!r} must be letters, digits, '.', '_' or '-' (it becomes a file name).")


def _parse_spacing(text: str | None):
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise CmrError(f"--spacing {text!r} must be three numbers in mm, like 8,1.25,1.25 (slice, row, column).") from None
    if len(vals) != 3:
        raise CmrError(f"--spacing {text!r} must be three numbers in mm, like 8,1.25,1.25 (slice, row, column).")
    return vals


@app.callback()
def _root(ctx: typer.Context, version: bool = typer.Option(False, "--version", help="Print the version and exit.")):
    if version:
        typer.echo(f"cmrstudio {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        _launch(None)


def _launch(path: Optional[Path], case: Optional[str] = None, ready_file: Optional[Path] = None, quit_when_ready: bool = False) -> None:
    try:
        from cmrstudio.gui.app import run
    except ImportError as exc:
        raise CmrError(
            f"The studio needs the GUI extras ({exc.name} is missing); install them with `pip install -e .[gui]`."
        ) from exc
    run(path, case=case, ready_file=ready_file, quit_when_ready=quit_when_ready)


@app.command("open")
def open_(
    path: Optional[Path] = typer.Argument(None, help="A scan, mask or dataset folder."),
    case: Optional[str] = typer.Option(None, help="Case to open from a dataset folder."),
    ready_file: Optional[Path] = typer.Option(None, "--ready-file", hidden=True, help="Write start-up timing here once the first frame is drawn."),
    quit_when_ready: bool = typer.Option(False, "--quit-when-ready", hidden=True, help="Close once the first frame is drawn (bench startup)."),
):
    """Open the studio on a file or dataset folder (the built-in sample case without one)."""
    _launch(path, case, ready_file, quit_when_ready)


@app.command()
def screenshot(
    out: Path = typer.Option(Path("resources/screenshot.png"), "--out", help="PNG to write."),
    path: Optional[Path] = typer.Argument(None, help="What to open (the sample case without one)."),
    case: Optional[str] = typer.Option(None),
):
    """Open the studio, take a screenshot of the whole window, and close it (needs a display or Xvfb)."""
    from cmrstudio.gui.app import screenshot as take

    take(out, path, case)
    typer.echo(f"wrote {out}")


@app.command()
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


@app.command()
def check(
    path: Path = typer.Argument(..., help="A mask file, or an image with --mask, or a dataset folder."),
    mask: Optional[Path] = typer.Option(None),
    labels: Optional[str] = LabelsOpt,
    spacing: Optional[str] = SpacingOpt,
):
    """Run the painter's anatomy checks (ring closed, RV outside, wall thickness, labels)."""
    from cmrstudio.anatomy import check_mask, summarise
    from cmrstudio.io import read_case

    c = read_case(path, mask=mask, labels=labels, spacing=_parse_spacing(spacing))
    if c.mask is None:
        raise CmrError(f"{path} has no mask to check; give a mask file or --mask.")
    findings = check_mask(c.mask, c.spacing)
    for line in summarise(findings):
        typer.echo(line)
    if not [f for f in findings if f.severity != "info"]:
        typer.echo("no problems found")


@app.command()
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


@app.command()
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

    cases = read_cases(path, case=case, mask=mask, labels=labels, frame=frame, spacing=_parse_spacing(spacing))
    p = Path(path)
    ids = [c.case_id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise CmrError(f"{p} holds several cases named {dup[0]!r}; convert them one at a time with --case.")
    for c in cases:
        write_case(c, out, image_dtype=np.int16 if int16 else np.float32)
    typer.echo(f"wrote {len(cases)} case(s) to {out}")


train_app = typer.Typer(help="Train models: spade, diffusion, flow, segmenter.", no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("spade")
def train_spade(
    data: list[str] = typer.Option([], "--data", help="Training folder or file (any format cmrstudio reads); repeat for several."),
    out: Path = typer.Option(Path("runs/spade"), "--out", help="Run folder: model, card, samples, training state."),
    name: str = typer.Option("spade", "--name", help="Model name (file names and registry)."),
    phantom: int = typer.Option(0, "--phantom", help="Add N phantom cases to the data (alone, for a smoke run)."),
    exclude: list[str] = typer.Option([], "--exclude", help="Hold out cases whose id starts with this; repeatable."),
    preset: str = typer.Option("lite", "--preset", help="Architecture: scene (whole field of view, live), lite (heart crop), base (GPU), scene-tiny (tests)."),
    size: int = typer.Option(128, "--size", help="Frame size in pixels (128 live, 256 HQ)."),
    steps: int = typer.Option(2000, "--steps", help="Total training iterations."),
    batch: int = typer.Option(8, "--batch", help="Batch size."),
    lr_g: float = typer.Option(1e-4, "--lr-g"),
    lr_d: float = typer.Option(4e-4, "--lr-d"),
    seed: int = typer.Option(0, "--seed"),
    sample_every: int = typer.Option(250, "--sample-every", help="Write a sample grid PNG every N steps."),
    save_every: int = typer.Option(500, "--save-every", help="Save model and training state every N steps."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or mps (picked automatically when omitted)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last saved step."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop (and save) after this many minutes."),
    dp_epsilon: Optional[float] = typer.Option(None, "--dp-epsilon", help="Train with differential privacy (DP-SGD, Opacus) and stop when this epsilon is spent."),
    dp_delta: float = typer.Option(1e-5, "--dp-delta", help="Delta of the (epsilon, delta) guarantee."),
    dp_max_grad_norm: float = typer.Option(1.0, "--dp-max-grad-norm", help="Per-sample gradient clipping bound."),
    dp_noise: Optional[float] = typer.Option(None, "--dp-noise", help="Noise multiplier (default: calibrated to spend --dp-epsilon in --steps)."),
    bf16: Optional[bool] = typer.Option(False, "--bf16/--fp32", help="Scene presets: bfloat16 autocast for the networks (losses stay float32)."),
    install: bool = typer.Option(False, "--install", help="Copy the finished model into the user models folder."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Train a SPADE generator (resumable; progress bar with ETA; sample grids in OUT/samples); --dp-epsilon trains it privately."""
    from cmrstudio.models.checkpoint import read_card
    from cmrstudio.train.spade import SpadeTrainer, TrainOptions

    opts = TrainOptions(
        data=list(data), out=str(out), name=name, phantom=phantom, exclude=list(exclude), preset=preset, size=size,
        steps=steps, batch=batch, lr_g=lr_g, lr_d=lr_d, seed=seed, sample_every=sample_every, save_every=save_every,
        device=device, threads=threads, resume=resume, max_minutes=max_minutes,
        dp_epsilon=dp_epsilon, dp_delta=dp_delta, dp_max_grad_norm=dp_max_grad_norm, dp_noise=dp_noise, bf16=bf16,
    )
    _check_name(name)
    tr = SpadeTrainer(opts).run(progress=not quiet)
    if tr.dp:
        typer.echo(f"Differential privacy: epsilon {tr.epsilon_spent():.3f} spent of {dp_epsilon} (delta {dp_delta:g}) in {tr.step} steps.")
    _report_trained(read_card(Path(out) / f"{name}.json"), tr.step, install)


def _train_generator(objective: str, **kw) -> None:
    from cmrstudio.models.checkpoint import read_card
    from cmrstudio.train.diffusion import DiffusionOptions, DiffusionTrainer

    install, quiet = kw.pop("install"), kw.pop("quiet")
    _check_name(kw["name"])
    kw["out"], kw["data"], kw["exclude"] = str(kw["out"]), list(kw["data"]), list(kw["exclude"])
    tr = DiffusionTrainer(DiffusionOptions(objective=objective, **kw)).run(progress=not quiet)
    _report_trained(read_card(Path(kw["out"]) / f"{kw['name']}.json"), tr.step, install)


def _report_trained(info, step: int, install: bool) -> None:
    typer.echo(f"Model {info.name}: {info.weights_path} ({info.size_mb:.1f} MB), card {info.card_path}, step {step}.")
    if install:
        from cmrstudio.models.registry import install_model

        typer.echo(f"Installed into {install_model(info).card_path.parent}.")


def _hq_train_command(objective: str, default_steps: int):
    def command(
        data: list[str] = typer.Option([], "--data", help="Training folder or file (any format cmrstudio reads); repeat for several."),
        out: Path = typer.Option(Path(f"runs/{objective}"), "--out", help="Run folder: model, card, samples, training state."),
        name: str = typer.Option(objective, "--name", help="Model name (file names and registry)."),
        phantom: int = typer.Option(0, "--phantom", help="Add N phantom cases to the data (alone, for a smoke run)."),
        exclude: list[str] = typer.Option([], "--exclude", help="Hold out cases whose id starts with this; repeatable."),
        preset: str = typer.Option("lite", "--preset", help="Architecture: scene (whole field of view), lite (heart crop), base (GPU), layout (tissue-class prior), tiny/scene-tiny (tests)."),
        size: int = typer.Option(128, "--size", help="Frame size in pixels (128 live frame, 256 HQ frame)."),
        steps: int = typer.Option(20000, "--steps", help="Total training iterations."),
        batch: int = typer.Option(8, "--batch", help="Batch size."),
        lr: float = typer.Option(2e-4, "--lr"),
        warmup: int = typer.Option(200, "--warmup", help="Steps of learning-rate warm-up."),
        cond_drop: float = typer.Option(0.1, "--cond-drop", help="Fraction of samples trained without the mask (for guidance)."),
        guidance: float = typer.Option(1.5, "--guidance", help="Guidance scale for the sample grids and the card's default."),
        sample_steps: int = typer.Option(default_steps, "--sample-steps", help="Sampling steps for the grids and the card's default."),
        seed: int = typer.Option(0, "--seed"),
        sample_every: int = typer.Option(500, "--sample-every", help="Write a sample grid PNG every N steps."),
        save_every: int = typer.Option(500, "--save-every", help="Save model and training state every N steps."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or mps (picked automatically when omitted)."),
        threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
        bf16: Optional[bool] = typer.Option(None, "--bf16/--fp32", help="Mixed precision (default: where bfloat16 is native)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last saved step."),
        max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop (and save) after this many minutes."),
        install: bool = typer.Option(False, "--install", help="Copy the finished model into the user models folder."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ):
        options = {k: v for k, v in locals().items() if k != "objective"}  # locals() also holds the closure's objective
        _train_generator(objective, **options)

    return command


train_app.command("diffusion", help="Train a mask-conditioned diffusion model (v-prediction, DDIM sampling; resumable, EMA, sample grids).")(
    _hq_train_command("diffusion", 25))
train_app.command("flow", help="Train a mask-conditioned rectified-flow model (few-step ODE sampling; resumable, EMA, sample grids).")(
    _hq_train_command("flow", 4))


@app.command()
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
        typer.echo(f"{r['name']:<20} {r['kind']:<10} {r['origin']:<8} {r['size_mb']:>6.1f} MB  {r['resolution']}px  "
                   f"vendors {','.join(r['vendors_trained'])}  {r['iterations']} it{extra}")
    for p in problems:
        typer.echo(f"warning: {p}", err=True)


@app.command()
def render(
    mask: Path = typer.Argument(..., help="Mask file (any supported format) or dataset folder / HDF5 file with labels."),
    out: Path = typer.Option(..., "--out", help="Output image: .nii.gz, .nii, .mha or .nrrd."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name or card path: spade (default, live), diffusion or flow (HQ), or any installed model."),
    context: Optional[Path] = typer.Option(None, "--context", help="Render in this patient: the scan (file or dataset folder) the mask was painted on; "
                                                                  "its own pixels stay outside a margin around the heart. Without it the render is fully synthetic."),
    context_case: Optional[str] = typer.Option(None, "--context-case", help="The case in a --context dataset folder (default: --case)."),
    margin: float = typer.Option(10.0, "--margin", help="In this patient: repaint within this many mm of the scan's own heart and the painted one."),
    vendor: Optional[str] = typer.Option(None, "--vendor", help="Scanner style: siemens, philips, ge, canon or unknown (default: the context scan's, else unknown)."),
    seed: int = typer.Option(0, "--seed", help="Style seed; the same seed gives the same image."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps of a diffusion (e.g. 25) or flow (e.g. 4) model; the card's default when omitted."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale of a diffusion or flow model (1 = none)."),
    solver: Optional[str] = typer.Option(None, "--solver", help="ODE solver of a flow model: euler or heun."),
    labels: Optional[str] = LabelsOpt,
    frame: Optional[int] = FrameOpt,
    spacing: Optional[str] = SpacingOpt,
    case: Optional[str] = typer.Option(None, "--case", help="Case to take the mask from, in a dataset folder."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or mps (automatic when omitted)."),
):
    """Render every slice of a mask into an image with the mask's own shape and geometry: fully synthetic, or in a patient's own scan."""
    import time

    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.io import read_case, read_mask, write_volume
    from cmrstudio.models.registry import get_model

    from cmrstudio.engine.factory import generator_kinds

    info = get_model(model, kind=generator_kinds())
    hq = {k: v for k, v in (("steps", steps), ("guidance", guidance), ("solver", solver)) if v is not None}
    r = open_renderer(info, device=device, **hq)
    c = read_mask(mask, labels=labels, frame=frame, spacing=_parse_spacing(spacing), case=case)
    image = heart = None
    if context is not None:
        scan = read_case(context, frame=frame, spacing=_parse_spacing(spacing), case=context_case or case)
        if scan.image is None:
            raise CmrError(f"{context} holds no image to render into; give the scan the mask was painted on.")
        if scan.shape != c.shape:
            raise CmrError(f"The mask {mask} is {'×'.join(map(str, c.shape))} but the scan {context} is {'×'.join(map(str, scan.shape))}; "
                           "give the mask that was painted on this scan.")
        if not r.scene:
            raise CmrError(f"The model '{r.name}' renders the heart crop only and cannot render into a patient's scan; "
                           "use a scene model (spade-cmr, flow-cmr) or drop --context.")
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
        typer.echo(f"note: {mask} stores no voxel spacing; the frame is sized to the heart (give --spacing to use mm).", err=True)
    t0 = time.perf_counter()
    img, fr = r.render_volume(c.mask, c.spacing, vendor=vendor, seed=seed, image=image, heart=heart,
                              margin_mm=margin if image is not None else None)
    secs = time.perf_counter() - t0
    write_volume(out, img, c.affine, dtype=np.float32)
    fov = f"{fr.spacing_mm * fr.size:.0f} mm" if fr.spacing_mm else "heart-sized"
    how = f", {r.solver} {r.steps} steps, guidance {r.guidance:g}" if hasattr(r, "solver") else ""
    where = (f"in this patient ({context}; {margin:g} mm around the heart repainted, derived from a patient scan)" if image is not None
             else "fully synthetic, the whole field of view" if r.scene else f"fully synthetic, {fov} heart frame")
    typer.echo(f"Wrote {out}: {img.shape[0]} slices of {img.shape[1]}×{img.shape[2]}, model {r.name} ({r.kind}{how}), "
               f"vendor {vendor}, seed {seed}, {where}, {secs:.1f} s.")


@app.command("export")
def export_cmd(
    source: Optional[Path] = typer.Argument(None, help="A studio project folder, or a folder of saved renders."),
    dest: Optional[Path] = typer.Argument(None, help="The export folder to create."),
    fmt: str = typer.Option("nifti", "--format", help="nifti (image + mask + JSON), nnunet (nnU-Net v2 raw dataset) or dicom."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DEST if it exists (the old export is removed only once the new one is complete)."),
    with_real: list[Path] = typer.Option([], "--with-real", help="nnunet: also add the real cases (image + mask) of this folder; repeatable."),
    dataset_id: int = typer.Option(501, "--dataset-id", help="nnunet: the dataset number (DatasetNNN_Name)."),
    name: str = typer.Option("SyntheticCMR", "--name", help="nnunet: the dataset name."),
    min_rating: Optional[int] = typer.Option(None, "--min-rating", help="Only renders rated at least this (1–5)."),
    verify_dest: Optional[Path] = typer.Option(None, "--verify", help="Check an export against its manifest instead."),
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
                 min_rating=min_rating, progress=lambda m: typer.echo(m))
    typer.echo(f"exported {len(rep.exported)} synthetic case{'s' if len(rep.exported) != 1 else ''}"
               + (f" and {len(rep.real)} real" if rep.real else "") + f" as {fmt} to {rep.dest} ({rep.files} files, manifest.json)")
    for sk in rep.skipped:
        typer.echo(f"cmrstudio: skipped: {sk}", err=True)
    if rep.skipped:
        raise typer.Exit(1)


study_app = typer.Typer(help="Blinded real-vs-synthetic reader studies: create, read, report.", no_args_is_help=True)
app.add_typer(study_app, name="study")


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
    from cmrstudio.study.design import load_study
    from cmrstudio.study.report import write_report
    from cmrstudio.study.stats import score_study
    from cmrstudio.study.store import Store, to_answers

    st = load_study(study)
    store = Store(st)
    answers = to_answers(st, store.rows())
    store.close()
    if not answers:
        raise CmrError(f"{study} has no answers yet; readers answer with `cmrstudio study read {study} --reader NAME`.")
    scores = score_study(answers)
    paths = write_report(scores, answers, out or (st.folder / "report"), title=f"Reader study: {st.name}",
                         study_info={"items": len(st.items), "pairs": len(st.pairs), "seed": st.seed, "mode": st.mode,
                                     "readers": sorted({a.reader for a in answers})})
    typer.echo(f"report: {paths['html']} (answers: {paths['csv']}, scores: {paths['json']})")


@study_app.command("machine")
def study_machine(
    study: Path = typer.Argument(..., help="The study folder."),
    train: list[Path] = typer.Option([], "--train", help="Real scans with masks to train on (never the study's own cases); repeatable."),
    model: Optional[str] = typer.Option(None, "--model", help="The SPADE model that makes the synthetic training images."),
    steps: int = typer.Option(300, "--steps", help="Training steps."),
    seed: int = typer.Option(0, "--seed"),
):
    """Add a machine reader: a real-vs-synthetic classifier trained on other cases answers the study's questions."""
    from cmrstudio.study.machine_reader import add_machine_reader

    res = add_machine_reader(study, train, model=model, steps=steps, seed=seed, progress=typer.echo)
    typer.echo(res)


bench_app = typer.Typer(help="Benchmarks that print figures: live, hq, studio, startup.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("live")
def bench_live(
    model: Optional[str] = typer.Option(None, "--model", help="Model name or card path (default: the shipped SPADE model)."),
    n: int = typer.Option(100, "--n", help="Frames to time."),
    device: Optional[str] = typer.Option(None, "--device"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Per-frame latency of the live path (mask edit -> frame -> model -> back), p50/p95/fps."""
    from cmrstudio.engine.bench import bench_live as run_bench

    res = run_bench(model=model, n=n, device=device, threads=threads)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    typer.echo(f"live path, model {res['model']} ({res['parameters'] / 1e6:.2f} M parameters), {res['size']}×{res['size']}, {res['hardware']}")
    typer.echo(f"  synchronous: p50 {res['p50_ms']:.1f} ms  p95 {res['p95_ms']:.1f} ms  mean {res['mean_ms']:.1f} ms  "
               f"{res['fps']:.1f} fps  (model alone p50 {res['model_p50_ms']:.1f} ms) over {res['n']} frames")
    e = res["engine"]
    typer.echo(f"  engine, brush dabs every {e['dab_interval_ms']:.0f} ms: {e['submitted']} submitted, {e['rendered']} rendered, "
               f"{e['dropped']} dropped as stale; dab-to-image p50 {e['latency_p50_ms']:.1f} ms, p95 {e['latency_p95_ms']:.1f} ms")


@bench_app.command("hq")
def bench_hq_cmd(
    model: list[str] = typer.Option([], "--model", help="Diffusion or flow model(s); default: the shipped diffusion and flow models."),
    steps: list[int] = typer.Option([], "--steps", help="Step counts to time (default: 10, 25, 50 for diffusion; 1, 2, 4, 8 for flow)."),
    n: int = typer.Option(3, "--n", help="Samples timed per setting (median reported)."),
    size: Optional[int] = typer.Option(None, "--size", help="Also time an untrained network of the same architecture at this size (e.g. 256)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Guidance scale (the card's default when omitted; 1 halves the work)."),
    device: Optional[str] = typer.Option(None, "--device"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Seconds per sample of each HQ sampler and step count on this machine (one 128×128 slice of the sample case)."""
    from cmrstudio.engine.bench import bench_hq

    res = bench_hq(models=list(model) or None, steps=list(steps) or None, n=n, size=size, guidance=guidance, device=device, threads=threads)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    typer.echo(f"HQ rendering on {res['hardware']} ({res['precision']}), median of {n} per setting:")
    for row in res["rows"]:
        typer.echo(f"  {row['model']:<16} {row['kind']:<9} {row['solver']:<5} {row['size']:>4}px  {row['steps']:>3} steps  "
                   f"guidance {row['guidance']:<4g} {row['seconds']:>7.2f} s/sample  ({row['ms_per_step']:.0f} ms/step)")


@train_app.command("segmenter")
def train_segmenter_cmd(
    data: list[str] = typer.Option([], "--data", help="Training folder or file; repeat for several."),
    out: Path = typer.Option(Path("runs/segmenter"), "--out", help="Run folder for the model and its card."),
    name: str = typer.Option("segmenter", "--name"),
    phantom: int = typer.Option(0, "--phantom", help="Add N phantom cases."),
    exclude: list[str] = typer.Option([], "--exclude", help="Hold out cases whose id starts with this; repeatable."),
    steps: int = typer.Option(800, "--steps"),
    batch: int = typer.Option(16, "--batch"),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    device: Optional[str] = typer.Option(None, "--device"),
    threads: Optional[int] = typer.Option(None, "--threads"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Train the LV/MYO/RV U-Net segmenter used to measure mask faithfulness."""
    from cmrstudio.train.segmenter import SegOptions, train_segmenter

    _check_name(name)
    info = train_segmenter(SegOptions(data=list(data), out=str(out), name=name, phantom=phantom, exclude=list(exclude), steps=steps,
                                      batch=batch, lr=lr, seed=seed, device=device, threads=threads), progress=not quiet)
    typer.echo(f"Model {info.name}: {info.weights_path} ({info.size_mb:.1f} MB), card {info.card_path}.")


evaluate_app = typer.Typer(help="Measure models: fidelity, faithfulness, diversity, privacy, utility, the segmenter; and report.", no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")


EvalDataOpt = typer.Option(..., "--data", help="Folder or file with real images and expert masks; repeatable.")
EvalCaseOpt = typer.Option([], "--case", help="Only cases whose id starts with this (the held-out ones); repeatable.")
GeneratorOpt = typer.Option(None, "--model", help="Generator: spade (default), diffusion, flow, or a name or card path.")
EvalStepsOpt = typer.Option(None, "--steps", help="Sampling steps of a diffusion or flow model (the card's default when omitted).")
EvalGuidanceOpt = typer.Option(None, "--guidance", help="Guidance scale of a diffusion or flow model.")


def _eval_inputs(data: list[str], case: list[str], seeds: int, steps: Optional[int], guidance: Optional[float]):
    """The held-out cases an evaluation runs on, and the HQ sampling options given."""
    from cmrstudio.data.dataset import cases_from
    from cmrstudio.train.common import check_counts

    check_counts(seeds=seeds)
    cases = [c for c in cases_from(data) if not case or any(c.case_id.startswith(p) for p in case)]
    if not cases:
        raise CmrError(f"No case in {', '.join(data)} matches --case {', '.join(case)}.")
    return cases, {k: v for k, v in (("steps", steps), ("guidance", guidance)) if v is not None}


def _held_out(case: list[str], info) -> list[str]:
    """The held-out patients given with --case, else those the model's card names."""
    return list(case) or list(info.card.get("training", {}).get("held_out_case_prefixes") or [])


def _write_json(out: Path, name: str, doc: dict) -> None:
    from cmrstudio.io.common import write_text_atomic

    Path(out).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(out) / name, json.dumps(doc, indent=2) + "\n")


def _record_metric(model, key: str, value: dict, kind=None) -> None:
    """Write a measured figure into a model's card (a generator's by default), with the command that reproduces it,
    and refresh the card's headline numbers."""
    import shlex

    from cmrstudio.evaluate.report import headline
    from cmrstudio.models.checkpoint import update_card
    from cmrstudio.models.registry import GENERATOR_KINDS, get_model

    info = model if hasattr(model, "card") else get_model(model, kind=kind or GENERATOR_KINDS)
    cmd = "cmrstudio " + shlex.join(a for a in sys.argv[1:] if a != "--write-card")
    metrics = {**info.card.get("metrics", {}), key: {**value, "command": cmd}}
    update_card(info, metrics=metrics, headline=headline({**info.card, "metrics": metrics}))


@evaluate_app.command("faithfulness")
def evaluate_faithfulness_cmd(
    data: list[str] = EvalDataOpt,
    case: list[str] = EvalCaseOpt,
    model: Optional[str] = GeneratorOpt,
    segmenter: Optional[str] = typer.Option(None, "--segmenter", help="Segmenter (default: the shipped one)."),
    seeds: int = typer.Option(2, "--seeds", help="Renders per mask."),
    steps: Optional[int] = EvalStepsOpt,
    guidance: Optional[float] = EvalGuidanceOpt,
    device: Optional[str] = typer.Option(None, "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    write_card: bool = typer.Option(False, "--write-card", help="Record the result in the generator's card."),
):
    """Dice of a real-trained segmenter on synthetic images of held-out masks, beside its Dice on the real images."""
    from cmrstudio.evaluate.faithfulness import evaluate_faithfulness
    from cmrstudio.models.registry import get_model

    cases, hq = _eval_inputs(data, case, seeds, steps, guidance)
    res = evaluate_faithfulness(cases, model=model, segmenter=segmenter, seeds=seeds, device=device, **hq)
    if write_card:
        seg = get_model(segmenter, kind="segmenter")
        _record_metric(model, "mask_faithfulness_dice", {**{k: v for k, v in res.to_dict().items() if k != "per_case"}, "segmenter": seg.name,
                                                         "cases_evaluated": [r["case"] for r in res.per_case]})
    if as_json:
        typer.echo(json.dumps(res.to_dict(), indent=2))
        return
    typer.echo(f"{res.n_cases} cases, {res.n_slices} slices, {res.seeds} seeds per mask; Dice of the segmenter:")
    typer.echo(f"  {'':<22}" + "".join(f"{k:>8}" for k in res.real))
    typer.echo("  on the real images    " + "".join(f"{v:>8.3f}" for v in res.real.values()))
    typer.echo("  on synthetic images   " + "".join(f"{v:>8.3f}" for v in res.synthetic.values()))


@evaluate_app.command("fidelity")
def evaluate_fidelity_cmd(
    data: list[str] = EvalDataOpt,
    case: list[str] = EvalCaseOpt,
    model: Optional[str] = GeneratorOpt,
    seeds: int = typer.Option(1, "--seeds", help="Renders per mask."),
    steps: Optional[int] = EvalStepsOpt,
    guidance: Optional[float] = EvalGuidanceOpt,
    device: Optional[str] = typer.Option(None, "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    write_card: bool = typer.Option(False, "--write-card", help="Record the result in the generator's card."),
):
    """FID and KID (standard FID Inception, offline) of renders of held-out masks against the real slices; paired SSIM/PSNR."""
    from cmrstudio.evaluate.fidelity import evaluate_fidelity

    cases, hq = _eval_inputs(data, case, seeds, steps, guidance)
    res = evaluate_fidelity(cases, model=model, seeds=seeds, device=device, **hq)
    if write_card:
        _record_metric(model, "fidelity", {**res.to_dict(), "cases_evaluated": sorted({c.case_id for c in cases})})
    if as_json:
        typer.echo(json.dumps(res.to_dict(), indent=2))
        return
    g = res.generator
    how = f" ({g['solver']} {g['steps']} steps, guidance {g['guidance']:g})" if g["kind"] != "spade" else ""
    typer.echo(f"{g['model']}{how}: {res.n_synthetic} synthetic vs {res.n_real} real slices")
    typer.echo(f"  FID {res.fid:.1f}   KID {1000 * res.kid:.1f} ± {1000 * res.kid_std:.1f} (×10⁻³, ± std over subsets)   "
               f"paired SSIM {res.ssim:.3f}  PSNR {res.psnr:.1f} dB")
    if res.reference_fid_real_halves is not None:
        typer.echo(f"  reference: FID between two halves of the real slices ({res.n_real // 2} each) {res.reference_fid_real_halves:.1f}: how far real is from real at this size")


@evaluate_app.command("diversity")
def evaluate_diversity_cmd(
    data: list[str] = EvalDataOpt,
    case: list[str] = EvalCaseOpt,
    model: Optional[str] = GeneratorOpt,
    seeds: int = typer.Option(3, "--seeds", help="Renders per mask (pairs of them are compared)."),
    masks: int = typer.Option(32, "--masks", help="Masks to render, spread over the cases."),
    steps: Optional[int] = EvalStepsOpt,
    guidance: Optional[float] = EvalGuidanceOpt,
    device: Optional[str] = typer.Option(None, "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    write_card: bool = typer.Option(False, "--write-card", help="Record the result in the generator's card."),
):
    """Diversity: MS-SSIM between renders of one mask with different seeds (lower = more varied)."""
    from cmrstudio.evaluate.fidelity import evaluate_diversity

    from cmrstudio.train.common import check_counts

    check_counts(masks=masks)
    cases, hq = _eval_inputs(data, case, 1, steps, guidance)
    res = evaluate_diversity(cases, model=model, seeds=seeds, masks=masks, device=device, **hq)
    if write_card:
        _record_metric(model, "diversity", {**res, "cases_evaluated": sorted({c.case_id for c in cases})})
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    typer.echo(f"{res['generator']['model']}: MS-SSIM between seeds {res['ms_ssim_between_seeds']:.3f}"
               + (f" ± {res['ms_ssim_sd_over_masks']:.3f}" if res["ms_ssim_sd_over_masks"] is not None else "")
               + f" over {res['masks']} masks, {res['seeds']} seeds each (1 = the same image every time)")


@evaluate_app.command("all")
def evaluate_all_cmd(
    data: list[str] = EvalDataOpt,
    case: list[str] = typer.Option([], "--case", help="Held-out patients (case-id prefixes); default: the model card's."),
    model: Optional[str] = GeneratorOpt,
    seeds: int = typer.Option(1, "--seeds", help="Renders per mask for fidelity and faithfulness."),
    space: str = typer.Option("inception", "--space", help="Feature space of the nearest-neighbour analysis."),
    utility: Optional[str] = typer.Option(None, "--utility", help="Also run the utility evaluation with this preset (cpu or full)."),
    max_members: Optional[int] = typer.Option(200, "--max-members", help="Cap the member slices of the membership attacks."),
    out: Path = typer.Option(Path("evaluation"), "--out", help="Folder for the JSON results, figures and MODEL_report.html."),
    device: Optional[str] = typer.Option(None, "--device"),
):
    """Every evaluation of one generator on patients it was not trained on — fidelity, faithfulness, diversity, privacy
    (and utility) — recorded in its card, then its HTML report."""
    from cmrstudio.models.registry import GENERATOR_KINDS, get_model

    info = get_model(model, kind=GENERATOR_KINDS)
    model = str(info.card_path)
    held = _held_out(case, info)
    if not held:
        raise CmrError(f"The card of '{info.name}' names no held-out patients; give them with --case.")
    out.mkdir(parents=True, exist_ok=True)
    common = dict(data=data, case=held, model=model, device=device, as_json=False, write_card=True)
    hq = dict(steps=None, guidance=None)
    steps_ = [("fidelity", lambda: evaluate_fidelity_cmd(seeds=seeds, **hq, **common)),
              ("faithfulness", lambda: evaluate_faithfulness_cmd(segmenter=None, seeds=seeds, **hq, **common)),
              ("diversity", lambda: evaluate_diversity_cmd(seeds=3, masks=16, **hq, **common)),
              ("privacy", lambda: evaluate_privacy_cmd(space=space, seeds=2, max_members=max_members, out=out, **hq, **common))]
    if utility:
        steps_.append(("utility", lambda: evaluate_utility_cmd(preset=utility, fractions=None, seeds=None, steps=None, out=out, **common)))
    for name, fn in steps_:
        typer.echo(f"== {name}")
        fn()
    evaluate_report_cmd(model=model, out=out, figures=[out])


@evaluate_app.command("realism")
def evaluate_realism_cmd(
    data: list[str] = EvalDataOpt,
    case: list[str] = typer.Option([], "--case", help="Held-out patients (case-id prefixes); default: the model card's."),
    model: Optional[str] = GeneratorOpt,
    mode: str = typer.Option("synthetic", "--mode", help="synthetic (no real pixel) or in-patient (the scan's own surroundings outside a margin)."),
    steps: Optional[int] = EvalStepsOpt,
    classifier_steps: int = typer.Option(400, "--classifier-steps", help="Training steps of the machine reader."),
    max_train: int = typer.Option(300, "--max-train", help="Training-patient slices the machine reader and the real-vs-real floor use."),
    seed: int = typer.Option(0, "--seed"),
    device: Optional[str] = typer.Option(None, "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    write_card: bool = typer.Option(False, "--write-card", help="Record the result in the generator's card."),
):
    """Realism on held-out patients: KID beside the real-vs-real floor, a trained machine reader's accuracy, and upsampling-grid artefacts."""
    from cmrstudio.data.dataset import cases_from
    from cmrstudio.engine.factory import generator_kinds
    from cmrstudio.evaluate.realism import evaluate_realism
    from cmrstudio.models.registry import get_model

    info = get_model(model, kind=generator_kinds())
    held = _held_out(case, info)
    if not held:
        raise CmrError(f"The card of '{info.name}' names no held-out patients; give them with --case.")
    every = cases_from(data)
    held_cases = [c for c in every if any(c.case_id.startswith(p) for p in held)]
    reference = [c for c in every if not any(c.case_id.startswith(p) for p in held)]
    if not held_cases:
        raise CmrError(f"No case in {', '.join(data)} is one of the held-out patients {', '.join(held)}.")
    hq = {"steps": steps} if steps is not None else {}
    res = evaluate_realism(held_cases, reference, model=str(info.card_path), mode=mode, classifier_steps=classifier_steps,
                           max_train_slices=max_train, device=device, seed=seed, **hq)
    if write_card:
        _record_metric(info, f"realism_{mode.replace('-', '_')}", {**res.to_dict(), "held_out": held})
    if as_json:
        typer.echo(json.dumps(res.to_dict(), indent=2))
        return
    lo, hi = res.machine_accuracy_ci
    g = res.grid_artefact
    typer.echo(f"{info.name}, {mode}: {res.n_synthetic} renders of held-out masks vs {res.n_real} real held-out slices")
    typer.echo(f"  KID {res.kid:.4f} ± {res.kid_std:.4f}   (real vs real, other patients: {res.kid_real_floor:.4f} ± {res.kid_real_floor_std:.4f})   "
               f"FID {res.fid:.1f} (real vs real {res.fid_real_floor:.1f})")
    typer.echo(f"  machine reader (trained on {res.n_classifier_train} training-patient slices): accuracy {res.machine_accuracy:.1%} "
               f"(95% CI {lo:.1%}–{hi:.1%}, {res.machine_n} images), AUC {res.machine_auc:.3f}; 50% = cannot tell")
    typer.echo(f"  upsampling grid: peak {g['peak_ratio']:.2f} at period {g['period_px']} px ({g['spectrum']} spectrum); real scans {g.get('real_peak_ratio', float('nan')):.2f}")


@evaluate_app.command("sheet")
def evaluate_sheet_cmd(
    data: list[str] = EvalDataOpt,
    case: list[str] = typer.Option([], "--case", help="Held-out patients to show (case-id prefixes); default: the live model card's."),
    model: list[str] = typer.Option([], "--model", help="Generators, one column group each (default: the live and the HQ model)."),
    seeds: int = typer.Option(2, "--seeds", help="Fully synthetic renders per mask and model."),
    rows: int = typer.Option(6, "--rows", help="Masks (rows), spread over the held-out cases."),
    full: bool = typer.Option(False, "--full", help="Whole slices instead of the 160 mm heart frame."),
    out: Path = typer.Option(Path("contact_sheet.png"), "--out", help="The PNG to write."),
    device: Optional[str] = typer.Option(None, "--device"),
):
    """A contact sheet of held-out masks: the real slice | each model fully synthetic (several seeds) | each model in this patient."""
    from cmrstudio.data.dataset import cases_from
    from cmrstudio.engine.factory import generator_kinds
    from cmrstudio.evaluate.sheet import contact_sheet
    from cmrstudio.models.registry import get_model

    names = list(model) or ["spade", "flow"]
    infos = [get_model(m, kind=generator_kinds()) for m in names]
    held = _held_out(case, infos[0])
    cases = [c for c in cases_from(data) if not held or any(c.case_id.startswith(p) for p in held)]
    if not cases:
        raise CmrError(f"No case in {', '.join(data)} is one of the held-out patients {', '.join(held)}.")
    path = contact_sheet(cases, [str(i.card_path) for i in infos], out, seeds=seeds, rows=rows, full=full, device=device)
    typer.echo(f"Wrote {path}.")


@evaluate_app.command("report")
def evaluate_report_cmd(
    model: Optional[str] = typer.Argument(None, help="A model name or card path (default: the shipped SPADE model)."),
    out: Path = typer.Option(Path("report"), "--out", help="Folder for MODEL_report.html."),
    figures: list[Path] = typer.Option([], "--figures", help="An evaluation's --out folder whose MODEL_*.png figures to embed; repeatable."),
):
    """A self-contained HTML report of a model's card and evaluation (tables, plots, plain-language lines, methods)."""
    from cmrstudio.evaluate.report import plain_language, write_model_report
    from cmrstudio.models.registry import get_model

    from cmrstudio.models.registry import GENERATOR_KINDS

    info = get_model(model, kind=tuple(GENERATOR_KINDS) + ("segmenter",))
    path = write_model_report(info, out, figures)
    for line in plain_language(info.card):
        typer.echo(f"- {line}")
    typer.echo(f"report: {path}")


@evaluate_app.command("segmenter")
def evaluate_segmenter_cmd(
    data: list[str] = EvalDataOpt,
    case: list[str] = typer.Option([], "--case", help="Cases whose id starts with this; default: the segmenter card's held-out patients."),
    segmenter: Optional[str] = typer.Option(None, "--segmenter", help="Segmenter (default: the shipped one)."),
    device: Optional[str] = typer.Option(None, "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    write_card: bool = typer.Option(False, "--write-card", help="Record the result in the segmenter's card."),
):
    """Dice and HD95 (mm) per structure of the segmenter on real patients it was not trained on."""
    from cmrstudio.data.dataset import cases_from
    from cmrstudio.evaluate.segmentation import evaluate_segmenter
    from cmrstudio.models.registry import get_model

    info = get_model(segmenter, kind="segmenter")
    held = _held_out(case, info)
    cases = [c for c in cases_from(data) if not held or any(c.case_id.startswith(p) for p in held)]
    if not cases:
        raise CmrError(f"No case in {', '.join(data)} matches {', '.join(held)}; give the folder that holds them with --data.")
    res = evaluate_segmenter(cases, info, device=device)
    if write_card:
        _record_metric(info, "held_out_segmentation", {**{k: v for k, v in res.to_dict().items() if k != "per_case"},
                                                       "cases_evaluated": [r["case"] for r in res.per_case]})
    if as_json:
        typer.echo(json.dumps(res.to_dict(), indent=2))
        return
    typer.echo(f"{res.segmenter} on {res.cases} cases, {res.slices} heart slices (frame pixels {res.spacing_mm} mm):")
    typer.echo(f"  {'':<6}{'Dice':>14}{'HD95 (mm)':>18}{'missed slices':>15}")
    for name, v in res.summary.items():
        if name == "mean":
            continue
        sd = lambda k: f" ± {v[k + '_sd']:.3f}" if v.get(k + "_sd") is not None else ""  # noqa: E731
        typer.echo(f"  {name:<6}{v['dice']:>8.3f}{sd('dice'):>6}{v['hd95_mm']:>10.2f}{sd('hd95_mm'):>8}{v['missed_slices']:>15}")
    typer.echo(f"  mean  {res.summary['mean']['dice']:>8.3f}{'':>6}{res.summary['mean']['hd95_mm']:>10.2f}")


@evaluate_app.command("utility")
def evaluate_utility_cmd(
    data: list[str] = EvalDataOpt,
    case: list[str] = typer.Option([], "--case", help="Held-out patients (case-id prefixes), the test set; default: the model card's."),
    model: Optional[str] = GeneratorOpt,
    preset: str = typer.Option("cpu", "--preset", help="cpu (minutes on 2 cores) or full (the GPU machine)."),
    fractions: Optional[str] = typer.Option(None, "--fractions", help="Fractions of the training patients, like 0.1,0.25,1 (default: the preset's)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Training seeds per arm (default: the preset's)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Fixed training iterations per segmenter (default: the preset's)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for utility.json and the figure."),
    device: Optional[str] = typer.Option(None, "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    write_card: bool = typer.Option(False, "--write-card", help="Record the result in the generator's card."),
):
    """Segmenters trained on real, real + synthetic and synthetic slices at several fractions of the training patients,
    scored on held-out real patients (Dice, HD95) with a paired Wilcoxon test against real."""
    from dataclasses import asdict

    from cmrstudio.data.dataset import cases_from
    from cmrstudio.evaluate.utility import PRESETS, evaluate_utility, utility_figure
    from cmrstudio.models.registry import GENERATOR_KINDS, get_model

    if preset not in PRESETS:
        raise CmrError(f"--preset {preset!r} is not known; use one of {', '.join(PRESETS)}.")
    pr = asdict(PRESETS[preset])
    if fractions is not None:
        pr["fractions"] = [x.strip() for x in fractions.split(",") if x.strip()]
    if seeds is not None:
        pr["seeds"] = seeds
    if steps is not None:
        pr["steps"] = steps
    held = _held_out(case, get_model(model, kind=GENERATOR_KINDS))
    say = lambda i, n, msg: typer.echo(f"[{i}/{n}] {msg}", err=True)  # noqa: E731
    res = evaluate_utility(cases_from(data), held, model=model, device=device, progress=say, **pr)
    doc = res.to_dict()
    if out is not None:
        _write_json(out, "utility.json", doc)
        doc["figure"] = utility_figure(Path(out) / f"{res.generator['model']}_utility.png", res)
    if write_card:
        _record_metric(model, "utility", {k: v for k, v in doc.items() if k not in ("runs", "figure")} | {"preset_name": preset})
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    typer.echo(f"{res.generator['model']}: {res.train_patients} training patients, {len(res.test_cases)} held-out cases; "
               f"{res.preset['steps']} iterations, {res.preset['seeds']} seeds")
    typer.echo(f"  {'fraction':>8} {'arm':<16}{'patients':>9}{'slices':>8}{'LV':>7}{'MYO':>7}{'RV':>7}{'mean Dice':>11}{'HD95 mm':>9}")
    for r in res.rows:
        f = lambda v: f"{v:.3f}" if v is not None else "  -  "  # noqa: E731
        hd = f"{r['mean_hd95_mm']:.1f}" if r["mean_hd95_mm"] is not None else "-"
        typer.echo(f"  {r['fraction']:>8g} {r['arm']:<16}{r['patients']:>9}{r['slices']:>8}{f(r['LV_dice']):>7}{f(r['MYO_dice']):>7}{f(r['RV_dice']):>7}"
                   f"{f(r['mean_dice']):>11}{hd:>9}")
    for t in res.tests:
        p = f"p = {t['wilcoxon_p']:.3g}" if t["wilcoxon_p"] is not None else "p: -"
        typer.echo(f"  {t['fraction']:g}: {t['arm']} vs real: mean Dice {t['mean_dice_difference']:+.3f} "
                   f"({t['wins']} better, {t['losses']} worse of {t['cases']} cases; Wilcoxon {p})")


@evaluate_app.command("privacy")
def evaluate_privacy_cmd(
    data: list[str] = EvalDataOpt,
    case: list[str] = typer.Option([], "--case", help="Held-out patients (case-id prefixes), the non-members; default: the model card's."),
    model: Optional[str] = GeneratorOpt,
    space: str = typer.Option("inception", "--space", help="Feature space of the nearest-neighbour analysis: inception or pixel."),
    seeds: int = typer.Option(3, "--seeds", help="Renders per mask in the reconstruction attack."),
    max_members: Optional[int] = typer.Option(None, "--max-members", help="Cap the member slices of the attacks (a seeded sample)."),
    steps: Optional[int] = EvalStepsOpt,
    guidance: Optional[float] = EvalGuidanceOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for privacy.json and the closest-pairs figure."),
    device: Optional[str] = typer.Option(None, "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    write_card: bool = typer.Option(False, "--write-card", help="Record the result in the generator's card."),
):
    """Nearest-neighbour memorisation and authenticity, and membership-inference attacks (training vs held-out patients)."""
    from cmrstudio.data.dataset import cases_from
    from cmrstudio.evaluate.privacy import evaluate_privacy
    from cmrstudio.models.registry import GENERATOR_KINDS, get_model
    from cmrstudio.train.common import check_counts

    check_counts(seeds=seeds)
    if max_members is not None:
        check_counts(max_members=max_members)
    held = _held_out(case, get_model(model, kind=GENERATOR_KINDS))
    hq = {k: v for k, v in (("steps", steps), ("guidance", guidance)) if v is not None}
    res = evaluate_privacy(cases_from(data), held, model=model, space=space, seeds=seeds, max_members=max_members, out=out, device=device, **hq)
    doc = res.to_dict()
    if out is not None:
        _write_json(out, "privacy.json", doc)
    if write_card:
        _record_metric(model, "privacy", {k: v for k, v in doc.items() if k != "figure"})
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    nn, g = res.nearest, res.generator
    typer.echo(f"{g['model']}: members {res.members['patients']} training patients ({res.members['slices']} slices), "
               f"non-members {res.nonmembers['patients']} held-out patients ({res.nonmembers['slices']} slices)")
    typer.echo(f"nearest neighbours ({nn['space']}): synthetic->train median {nn['synthetic_to_train_median']:.4g}, "
               f"new real patients->train {nn['holdout_to_train_median']:.4g} (ratio {nn['distance_ratio']:.2f})")
    typer.echo(f"  memorised (closer than 1/3 of any other patient's image): {nn['memorised']}/{nn['n_synthetic']} "
               f"= {100 * nn['memorisation_ratio']:.1f}% (new real patients: {100 * nn['holdout_memorisation_ratio']:.1f}%)")
    typer.echo(f"  authenticity {100 * nn['authenticity']:.1f}% (new real patients: {100 * nn['holdout_authenticity']:.1f}%)")
    for name, a in res.attacks.items():
        ci = a["auc_ci"]
        typer.echo(f"membership inference, {name}: AUC {a['auc']:.3f}" + (f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
                   + f", TPR at 1% FPR {100 * a['tpr_at_1pct_fpr']:.1f}% ({a['members']} members, {a['nonmembers']} non-members)")
        for d, b in a.get("by_dataset", {}).items():
            typer.echo(f"    within {d}: AUC {b['auc']:.3f} ({b['members']} members, {b['nonmembers']} non-members)")
    if res.figure:
        typer.echo(f"closest pairs: {res.figure}")


@bench_app.command("studio")
def bench_studio_cmd(
    strokes: int = typer.Option(12, "--strokes", help="Brush strokes to paint (real mouse drags on the canvas)."),
    moves: int = typer.Option(24, "--moves", help="Mouse moves per stroke, one every 16 ms (a 60 Hz mouse)."),
    model: Optional[str] = typer.Option(None, "--model", help="Live model (default: the shipped SPADE model)."),
    window: str = typer.Option("1600x960", "--window", help="Window size WxH in pixels."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Brush dab -> synthetic layer on screen in the real studio window, and how long the GUI thread was ever blocked."""
    from cmrstudio.gui.bench import bench_studio

    try:
        size = tuple(int(x) for x in window.lower().split("x"))
        assert len(size) == 2 and min(size) >= 400
    except (ValueError, AssertionError):
        raise CmrError(f"--window {window!r} must be WIDTHxHEIGHT in pixels, at least 400 each, like 1600x960.") from None
    res = bench_studio(strokes=strokes, moves=moves, model=model, window=size)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    d, m, h = res["dab_to_screen_ms"], res["model_ms"], res["gui_heartbeat_ms"]
    typer.echo(f"studio on {res['scan']}, live model {res['model']} ({res['frame_size']}² frame, {res['threads']} torch threads)")
    typer.echo(f"{res['strokes']} strokes, {res['dabs']} dabs -> {res['frames_shown']} frames shown, {res['skipped_latest_wins']} skipped (latest-wins)")
    typer.echo(f"dab -> on screen: p50 {d['p50']} ms, p95 {d['p95']} ms, max {d['max']} ms   (model alone p50 {m['p50']} ms)")
    q = res["gui_heartbeat_live_off_ms"]
    typer.echo(f"GUI heartbeat (5 ms timer) while painting: live on p50 {h['p50']} / p99 {h['p99']} / longest {h['max']} ms; "
               f"live off p50 {q['p50']} / p99 {q['p99']} / longest {q['max']} ms")
    typer.echo(f"window {res['window']}, canvas {res['canvas']} px (software OpenGL under Xvfb draws the canvas on the CPU)")


@bench_app.command("startup")
def bench_startup_cmd(
    n: int = typer.Option(3, "--n", help="Cold starts to time."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Seconds from launching `cmrstudio open` to the window with its first live frame drawn."""
    from cmrstudio.gui.bench import bench_startup

    res = bench_startup(n=n)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    for i, r in enumerate(res["runs"], 1):
        typer.echo(f"run {i}: window taking input at {r['window_s']} s, first live frame at {r['first_frame_s']} s")
    typer.echo(f"cold start to an interactive window: median {res['window_s_median']:.2f} s (max {res['window_s_max']:.2f}); "
               f"first synthetic frame on screen: median {res['first_frame_s_median']:.2f} s (max {res['first_frame_s_max']:.2f})")


def main(argv: list[str] | None = None) -> None:
    try:
        rc = app(args=argv, standalone_mode=False, prog_name="cmrstudio")
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


if __name__ == "__main__":  # pragma: no cover
    main()
