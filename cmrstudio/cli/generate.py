"""``cmrstudio generate``: a synthetic dataset from a recipe, locally or on a Ray cluster."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import typer

from cmrstudio.errors import CmrError


def generate(
    recipe: Path = typer.Argument(..., help="The recipe: a YAML or JSON file (see resources/recipes/example.yaml)."),
    out: Optional[Path] = typer.Option(None, "--out", help="The folder to generate into (a re-run with the same recipe resumes it)."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Run on Ray: 'auto' (the cluster this machine belongs to), HOST:PORT "
                                                           "(a head node's address), or 'local' (start Ray on this machine)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Ray actors (default: one per GPU, else one per CPU of the cluster)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or mps (automatic when omitted)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (cases, shards, sources, models, vendors) and exit."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Generate a synthetic dataset from a recipe: deterministic for its seed whatever the workers, resumable, written through the exporters (nnU-Net by default)."""
    from cmrstudio.generate.run import STATE, dataset_root, generate as run, load_plan, shard_done

    if dry_run:
        plan = load_plan(recipe)
        r = plan.recipe
        count = lambda key: ", ".join(f"{k} {v}" for k, v in sorted(Counter(key(c) for c in plan.cases).items()))  # noqa: E731
        typer.echo(f"recipe {recipe} (sha256 {plan.recipe_sha256[:12]}…, plan {plan.sha256[:12]}…): {r.cases} cases in "
                   f"{len(plan.shards)} shards of {r.shard_size}, seed {r.seed}")
        typer.echo("  anatomy: " + count(lambda c: "[%d] %s" % (c["anatomy"]["source"], c["anatomy"]["kind"])))
        typer.echo("  vendors: " + count(lambda c: c["vendor"]))
        typer.echo("  models:  " + count(lambda c: c["model"]["name"] + (" (%d steps)" % c["model"]["steps"] if c["model"]["steps"] else "")))
        par = [c["anatomy"]["params"] for c in plan.cases if c["anatomy"]["kind"] == "parametric"]
        if par:
            slices = sum(p["slices"] for p in par)
            rng = lambda k: f"{min(p[k] for p in par):g}–{max(p[k] for p in par):g}"  # noqa: E731
            typer.echo(f"  parametric: {len(par)} cases, {slices} slices; LV diameter {rng('lv_diameter_mm')} mm, "
                       f"wall {rng('wall_thickness_mm')} mm, RV scale {rng('rv_scale')}, slices {rng('slices')}")
        for i, s in enumerate(plan.sources):
            if s["kind"] != "parametric":
                n = len(s.get("files") or s.get("items") or [])
                typer.echo(f"  anatomy[{i}] {s['kind']}: {n} " + ("files" if s["kind"] == "masks" else "kept renders"))
        o = r.output
        typer.echo(f"  output: {o.format}" + (f" Dataset{o.dataset_id:03d}_{o.name}" if o.format == "nnunet" else f" {o.name}"))
        if out is not None and (out / STATE).is_file():
            done = sum(shard_done(out, k) for k in range(len(plan.shards)))
            typer.echo(f"  {out}: {done} of {len(plan.shards)} shards already finished")
        for c in plan.cases[:3]:
            typer.echo(f"  {c['id']}: {c}")
        return
    if out is None:
        raise CmrError("Give --out DIR, the folder to generate into (or --dry-run to print the plan).")
    rep = run(recipe, out, ray=ray, workers=workers, device=device, progress=not quiet)
    rate = f", {rep.slices_per_s:.2f} slices/s" if rep.slices_per_s else ""
    resumed = f"; {rep.shards_skipped} shard{'s' if rep.shards_skipped != 1 else ''} already finished {'was' if rep.shards_skipped == 1 else 'were'} kept" if rep.shards_skipped else ""
    typer.echo(f"Generated {rep.cases} case{'s' if rep.cases != 1 else ''} ({rep.slices} slice{'s' if rep.slices != 1 else ''}) in {rep.shards_total} shards: {rep.shards_rendered} rendered now "
               f"({rep.where}{rate}){resumed}; {rep.seconds:.1f} s.")
    if rep.dataset is not None:
        plan = load_plan(recipe)
        typer.echo(f"Dataset: {dataset_root(out, plan)} (manifest {rep.dataset / 'manifest.json'}, provenance {rep.dataset / 'generation.json'})")
