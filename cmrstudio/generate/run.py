"""Run a plan: locally (in this process) or on a Ray cluster (one actor per GPU or per CPU worker), shard by
shard, resumable; then assemble the dataset through the existing exporters.

Layout of ``--out DIR``::

    DIR/generate.json          the plan: recipe, its sha256, the plan's sha256, every case's spec
    DIR/shards/shard-0000/     finished shards (renders in the cmrstudio layout + shard.json, the done marker)
    DIR/renders/               every finished render, linked: a folder of renders `cmrstudio export` also takes
    DIR/dataset/               the export (nnU-Net by default: DatasetNNN_Name/...), with generation.json

A shard is rendered, written into a hidden partial folder and renamed into place in one step with its
``shard.json`` inside: a folder ``shard-NNNN`` is always complete. A re-run with the same recipe skips the
finished shards; a folder made by a different recipe is refused. The image of a case depends on its spec
alone: torch uses one thread per worker on a CPU (thread counts change the last bits of a convolution)
and deterministic algorithms on a GPU; every case is rendered on its own with its own seed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cmrstudio import __version__
from cmrstudio.errors import CmrError
from cmrstudio.generate.plan import Plan, build_anatomy, make_plan, public_spec
from cmrstudio.generate.recipe import load_recipe

STATE = "generate.json"
SHARD_DONE = "shard.json"
FORMAT = "cmrstudio-generate"


@dataclass
class GenerateReport:
    out: Path
    dataset: Path | None
    cases: int
    slices: int
    shards_total: int
    shards_skipped: int  # finished before this run (resumed)
    shards_rendered: int
    workers: int
    where: str  # "local cpu", "ray (2 actors, cpu)", ...
    seconds: float
    render_seconds: float  # time spent rendering this run's shards (wall)
    slices_rendered: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def slices_per_s(self) -> float | None:
        return self.slices_rendered / self.render_seconds if self.render_seconds > 0 and self.slices_rendered else None


# -- the worker: loads the models once, renders anatomy into images ----------------------------------

def deterministic_torch(threads: int = 1) -> None:
    import torch

    torch.set_num_threads(max(1, int(threads)))
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
    except Exception:  # pragma: no cover - older torch
        pass
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


class ShardRenderer:
    """Renders the anatomy of a shard's cases; holds each model loaded once. What a Ray actor wraps."""

    def __init__(self, models: list[dict] | None = None, device: str | None = None, threads: int = 1):
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
        deterministic_torch(threads)
        self.device, self.threads = device, threads
        self._renderers: dict = {}
        for m in models or []:
            self.renderer(m["name"], m.get("steps"))

    def renderer(self, name: str, steps: int | None):
        key = (name, steps)
        if key not in self._renderers:
            from cmrstudio.engine.factory import open_renderer

            self._renderers[key] = open_renderer(name, device=self.device, threads=self.threads, **({"steps": steps} if steps else {}))
        return self._renderers[key]

    def where(self) -> str:
        from cmrstudio.engine.device import pick_device

        return str(pick_device(self.device))

    def render(self, jobs: list[dict]) -> list[dict]:
        """``jobs``: {spec, mask, spacing} -> {image, frame, record, note, seconds} per case."""
        from cmrstudio.record import make_record

        out = []
        for job in jobs:
            spec = job["spec"]
            r = self.renderer(spec["model"]["name"], spec["model"]["steps"])
            _, vendor, note = r.resolve_vendor(spec["vendor"])
            t0 = time.perf_counter()
            img, frame = r.render_volume(job["mask"], job["spacing"], vendor=spec["vendor"], seed=spec["seed"])
            secs = time.perf_counter() - t0
            record = make_record(r, spec["seed"], vendor)
            out.append({"image": np.asarray(img, np.float32), "frame": frame.to_dict(), "record": record.to_dict(),
                        "note": note, "seconds": secs})
        return out


# -- state, shards --------------------------------------------------------------------------------------

def shard_dir(out: Path, k: int) -> Path:
    return out / "shards" / f"shard-{k:04d}"


def shard_done(out: Path, k: int) -> bool:
    return (shard_dir(out, k) / SHARD_DONE).is_file()


def _write_json_atomic(path: Path, obj) -> None:
    from cmrstudio.io.common import jsonable, write_text_atomic

    write_text_atomic(path, json.dumps(jsonable(obj), indent=2) + "\n")


def _state(plan: Plan) -> dict:
    return {"format": FORMAT, "version": 1, "cmrstudio": __version__, "recipe_sha256": plan.recipe_sha256,
            "plan_sha256": plan.sha256, "recipe": plan.recipe.canonical(), "models": plan.models,
            "shards": plan.shards, "cases": plan.cases}


def prepare_out(out: Path, plan: Plan, recipe_path: Path) -> None:
    """Start ``out``, or check that it was started by this very plan (else refuse to resume into it)."""
    state = out / STATE
    if state.is_file():
        try:
            old = json.loads(state.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise CmrError(f"{state} is damaged, so {out} cannot be resumed; give a new --out folder.") from None
        if old.get("recipe_sha256") != plan.recipe_sha256:
            raise CmrError(f"{out} was made by a different recipe (sha256 {str(old.get('recipe_sha256'))[:12]}…, not "
                           f"{plan.recipe_sha256[:12]}… of {recipe_path}); give a new --out folder or the recipe it was made with.")
        if old.get("plan_sha256") != plan.sha256:
            raise CmrError(f"{out} was made by this recipe, but the mask files or models it draws on have changed since; "
                           "give a new --out folder.")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CmrError(f"{out} exists and is not a cmrstudio generate folder (no {STATE}); give a new or empty --out folder.")
    try:
        (out / "shards").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CmrError(f"Cannot create {out} ({exc.strerror or exc}); give a writable --out folder.") from None
    _write_json_atomic(state, _state(plan))


def _tidy_partials(out: Path) -> None:
    for p in (out / "shards").glob(".shard-*.partial-*"):
        shutil.rmtree(p, ignore_errors=True)


def write_shard(out: Path, plan: Plan, k: int, anatomies: list, results: list[dict]) -> int:
    """Write shard ``k`` (renders + shard.json) into a partial folder and rename it into place; returns its slices."""
    from cmrstudio.data.frame import Frame
    from cmrstudio.io import write_case
    from cmrstudio.record import RenderRecord, render_case

    final = shard_dir(out, k)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cases, slices = [], 0
    for spec, anat, res in zip(plan.shard_cases(k), anatomies, results):
        record = RenderRecord.from_dict(res["record"])
        case = render_case(res["image"], anat.mask, anat.affine, Frame.from_dict(res["frame"]), record, spec["id"],
                           mask_source=anat.mask_source)
        # the mask's origin is known here (a phantom, a patient's augmented segmentation, a project's judgement):
        # an export takes it as said instead of comparing an augmented mask with its source
        case.source["exported"] = {"mask_origin": anat.mask_origin, "mask_origin_how": anat.how}
        case.source["generate"] = {"recipe_sha256": plan.recipe_sha256, "case": public_spec(spec), "anatomy": anat.detail}
        write_case(case, tmp, name=spec["id"])
        cases.append({"id": spec["id"], "slices": int(anat.mask.shape[0]), "note": res.get("note")})
        slices += int(anat.mask.shape[0])
    _write_json_atomic(tmp / SHARD_DONE, {"shard": k, "recipe_sha256": plan.recipe_sha256, "plan_sha256": plan.sha256,
                                          "cases": cases, "slices": slices, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    if final.exists():  # a folder without shard.json cannot be there (renames are whole); be safe anyway
        shutil.rmtree(final)
    os.replace(tmp, final)
    return slices


def shard_slices(out: Path, k: int) -> int:
    try:
        return int(json.loads((shard_dir(out, k) / SHARD_DONE).read_text(encoding="utf-8")).get("slices", 0))
    except (OSError, ValueError):
        return 0


def _jobs(plan: Plan, k: int) -> tuple[list, list[dict]]:
    anatomies = [build_anatomy(spec) for spec in plan.shard_cases(k)]
    jobs = [{"spec": spec, "mask": a.mask, "spacing": a.spacing} for spec, a in zip(plan.shard_cases(k), anatomies)]
    return anatomies, jobs


# -- executors ----------------------------------------------------------------------------------------

def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="case", desc="generate", file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, smoothing=0.1)


def run_local(plan: Plan, out: Path, todo: list[int], device: str | None, bar, threads: int = 1) -> tuple[int, str]:
    worker = ShardRenderer(_model_list(plan), device=device, threads=threads)
    slices = 0
    for k in todo:
        anatomies, jobs = _jobs(plan, k)
        slices += write_shard(out, plan, k, anatomies, worker.render(jobs))
        bar.update(len(jobs))
        bar.set_postfix(slices=slices)
    return slices, f"local {worker.where()}"


def _model_list(plan: Plan) -> list[dict]:
    seen, out = set(), []
    for m in plan.recipe.models:
        if (m.name, m.steps) not in seen:
            seen.add((m.name, m.steps))
            out.append({"name": m.name, "steps": m.steps})
    return out


def connect_ray(address: str | None, workers: int | None):
    """Join a Ray cluster (``auto`` or ``HOST:PORT``), or start a local instance (``local``); an already
    initialised Ray (a test's ``ray.init``) is used as it is."""
    try:
        import ray
    except ImportError:
        raise CmrError("--ray needs Ray, which is not installed; pip install 'cmrstudio[cluster]'.") from None
    if ray.is_initialized():
        return ray
    kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        if address in (None, "local"):
            ray.init(num_cpus=workers or None, **kw)
        else:
            ray.init(address=address, **kw)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        why = str(exc).splitlines()[0].split(". ")[0].rstrip(".")[:160]
        raise CmrError(f"Cannot join the Ray cluster at {address!r} ({why}); "
                       "start one with `ray start --head` and give its address, or use --ray local.") from None
    return ray


def run_ray(plan: Plan, out: Path, todo: list[int], address: str | None, workers: int | None, device: str | None, bar) -> tuple[int, str]:
    ray = connect_ray(address, workers)
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0)) if device in (None, "cuda") else 0
    if gpus:
        n, opts, dev = (workers or gpus), {"num_gpus": 1, "num_cpus": 1}, "cuda"
    else:
        n, opts, dev = (workers or max(1, int(res.get("CPU", 1)))), {"num_cpus": 1}, (device or "cpu")
    n = max(1, min(n, len(todo)))
    env = {"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}}
    Actor = ray.remote(ShardRenderer)
    actors = [Actor.options(**opts, runtime_env=env).remote(_model_list(plan), dev, 1) for _ in range(n)]
    queue = list(todo)
    pending: dict = {}  # ObjectRef -> (actor, shard, anatomies)
    slices = 0

    def submit(actor):
        if queue:
            k = queue.pop(0)
            anatomies, jobs = _jobs(plan, k)
            pending[actor.render.remote(jobs)] = (actor, k, anatomies)

    try:
        for a in actors:  # two shards in flight per actor: the next one's inputs are there when one finishes
            submit(a)
            submit(a)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            actor, k, anatomies = pending.pop(ref)
            try:
                results = ray.get(ref)
            except Exception as exc:  # a CmrError inside an actor comes back wrapped
                cause = getattr(exc, "cause", None)
                if isinstance(cause, CmrError):
                    raise CmrError(cause.message) from None
                raise
            slices += write_shard(out, plan, k, anatomies, results)
            bar.update(len(results))
            bar.set_postfix(slices=slices)
            submit(actor)
    finally:
        for a in actors:
            try:
                ray.kill(a)
            except Exception:
                pass
    return slices, f"ray ({n} actor{'s' if n != 1 else ''}, {'gpu' if gpus else dev})"


# -- assembly -----------------------------------------------------------------------------------------

def _link_renders(out: Path, plan: Plan) -> Path:
    renders = out / "renders"
    tmp = out / f".renders.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for k in range(len(plan.shards)):
        for f in sorted(shard_dir(out, k).iterdir()):
            if f.name == SHARD_DONE:
                continue
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)
    shutil.rmtree(renders, ignore_errors=True)
    os.replace(tmp, renders)
    return renders


def provenance(plan: Plan, report_where: str | None = None) -> dict:
    """What the dataset carries about how it was made (worker-independent: no host, no worker count)."""
    models = {name: dict(m) for name, m in plan.models.items()}
    return {"format": FORMAT, "version": 1, "cmrstudio": __version__, "recipe": plan.recipe.canonical(),
            "recipe_sha256": plan.recipe_sha256, "plan_sha256": plan.sha256, "models": models,
            "sources": [{k: v for k, v in s.items() if k != "paths"} for s in plan.sources],
            "cases": [public_spec(c) for c in plan.cases],
            "seeds": "each case's seeds come from numpy SeedSequence([recipe seed, case index])"}


def assemble(out: Path, plan: Plan, progress: Callable[[str], None] | None = None) -> Path:
    from cmrstudio.export import export

    renders = _link_renders(out, plan)
    o = plan.recipe.output
    dest = out / "dataset"
    export(renders, dest, fmt=o.format, overwrite=dest.exists(), dataset_id=o.dataset_id, name=o.name,
           progress=None, extra_files={"generation.json": provenance(plan)})
    return dest


def dataset_root(out: Path, plan: Plan) -> Path:
    """Where the dataset's cases are: ``DIR/dataset/DatasetNNN_Name`` for nnU-Net, else ``DIR/dataset``."""
    from cmrstudio.export.writers import nnunet_folder

    o = plan.recipe.output
    return out / "dataset" / nnunet_folder(o.dataset_id, o.name) if o.format == "nnunet" else out / "dataset"


# -- the command ----------------------------------------------------------------------------------------

def load_plan(recipe_path: str | Path) -> Plan:
    recipe, base = load_recipe(recipe_path)
    return make_plan(recipe, base, where=f"The recipe {recipe_path}")


def generate(recipe_path: str | Path, out: str | Path, ray: str | None = None, workers: int | None = None,
             device: str | None = None, progress: bool = True, use_ray: bool = False,
             stop_after: int | None = None) -> GenerateReport:
    """Generate (or resume) the dataset of ``recipe_path`` in ``out``.

    ``ray``: ``auto``, ``HOST:PORT`` or ``local`` runs on Ray (also ``use_ray`` with an initialised Ray);
    otherwise in this process. ``stop_after``: render at most this many shards, then stop without assembling
    (for benchmarks and tests).
    """
    t0 = time.perf_counter()
    recipe_path = Path(recipe_path).expanduser()
    out = Path(out).expanduser()
    if workers is not None and workers < 1:
        raise CmrError(f"--workers {workers} must be 1 or more.")
    if workers not in (None, 1) and ray is None and not use_ray:
        raise CmrError(f"--workers {workers} needs --ray (auto, an address, or local); without it generate runs in this process.")
    plan = load_plan(recipe_path)
    if ray is not None or use_ray:
        connect_ray(ray, workers)  # before anything is written: a cluster that cannot be reached leaves no folder
    prepare_out(out, plan, recipe_path)
    lock = _lock(out)
    try:
        return _generate(plan, out, ray, use_ray, workers, device, progress, stop_after, t0)
    finally:
        lock.close()


def _lock(out: Path):
    """One run at a time in a folder: a second one would tidy away the first one's partial shards."""
    import fcntl

    f = open(out / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise CmrError(f"Another cmrstudio generate is running in {out}; wait for it to finish (or stop it) before running again.") from None
    return f


def _generate(plan: Plan, out: Path, ray, use_ray, workers, device, progress, stop_after, t0) -> GenerateReport:
    _tidy_partials(out)
    done = [k for k in range(len(plan.shards)) if shard_done(out, k)]
    todo = [k for k in range(len(plan.shards)) if k not in set(done)]
    if stop_after is not None:
        todo = todo[:stop_after]
    done_cases = sum(len(plan.shards[k]) for k in done)
    slices = 0
    where = "nothing to render"
    t_render = time.perf_counter()
    if todo:
        with _progress(plan.recipe.cases, done_cases, progress) as bar:
            if ray is not None or use_ray:
                slices, where = run_ray(plan, out, todo, ray, workers, device, bar)
            else:
                slices, where = run_local(plan, out, todo, device, bar)
    render_secs = time.perf_counter() - t_render
    total_slices = sum(shard_slices(out, k) for k in range(len(plan.shards)))
    finished = all(shard_done(out, k) for k in range(len(plan.shards)))
    dataset = None
    if finished:
        dataset = assemble(out, plan)
    return GenerateReport(out, dataset, plan.recipe.cases, total_slices, len(plan.shards), len(done), len(todo),
                          workers or 1, where, time.perf_counter() - t0, render_secs if todo else 0.0, slices)
