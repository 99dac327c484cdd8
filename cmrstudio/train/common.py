"""What every trainer shares: loading the training cases, describing them for the card."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import torch

from cmrstudio.anatomy import VENDORS
from cmrstudio.case import Case
from cmrstudio.data.dataset import SliceDataset, cases_from
from cmrstudio.errors import CmrError

LICENCES = {
    "acdc": "ACDC: research use with citation, CC BY-NC-SA 4.0 (Bernard et al., IEEE TMI 2018)",
    "mnms": "M&Ms: research use with citation (Campello et al., IEEE TMI 2021)",
    "sunnybrook": "Sunnybrook Cardiac Data: CC0 1.0 (Radau et al., MIDAS Journal 2009)",
    "phantom": "cmrstudio phantom: generated, no restrictions",
}
NONCOMMERCIAL = {"acdc", "mnms"}



def load_cases(data: list[str], phantom: int = 0, exclude: list[str] = (), seed: int = 0) -> list[Case]:
    """Cases with image and mask from the given paths plus ``phantom`` phantom cases,
    without those whose id starts with one of ``exclude``."""
    cases: list[Case] = []
    if data:
        cases.extend(cases_from(data))
    if phantom:
        from cmrstudio.data.phantom import phantom_case

        for i in range(phantom):
            c = phantom_case(seed=seed * 1000 + i, vendor=VENDORS[i % 4])
            c.source["dataset"] = "phantom"
            cases.append(c)
    if not cases:
        raise CmrError("No training data: give --data FOLDER (any format cmrstudio reads) and/or --phantom N.")
    cases = [c for c in cases if not any(c.case_id.startswith(p) for p in exclude)]
    if not cases:
        raise CmrError(f"--exclude {', '.join(exclude)} holds out every case; nothing is left to train on.")
    return cases


def dataset_of(c: Case) -> str:
    d = str(c.source.get("dataset", c.source.get("reader", "unknown")))
    for key in LICENCES:
        if d.startswith(key):
            return key
    return d


def data_summary(ds: SliceDataset, cases: list[Case]) -> list[dict]:
    """Per dataset: cases, slices, vendor counts and licence, for a model card."""
    by_case = {c.case_id: c for c in cases}
    groups: dict[str, dict] = {}
    for (cid, _z), v in zip(ds.index, ds.vendors):
        key = dataset_of(by_case[cid])
        g = groups.setdefault(key, {"dataset": key, "cases": set(), "slices": 0, "vendors": Counter(), "licence": LICENCES.get(key, "see the data's own terms")})
        g["cases"].add(cid)
        g["slices"] += 1
        g["vendors"][VENDORS[int(v)]] += 1
    return [{**g, "cases": len(g["cases"]), "vendors": dict(g["vendors"])} for g in groups.values()]


PUBLIC_DATASETS = frozenset({"sunnybrook", "phantom"})  # data anyone may use, under no terms that bind the weights


def start_from(init: str, kinds: tuple[str, ...], what: str, mine: dict, ignore: tuple[str, ...] = (), option: str = "--init"):
    """The model a run starts from (``--init``): (its ModelInfo, its checked weights, the card's ``training.pretraining``
    record). It must be of one of ``kinds`` and have the same architecture options as ``mine`` (except ``ignore``);
    anything else is one sentence naming the model and what to do."""
    from cmrstudio.models.checkpoint import load_state, verify
    from cmrstudio.models.registry import get_model

    info = get_model(init, kind=None)
    src = info.card
    if info.kind not in kinds:
        raise CmrError(f"{option} {init}: {info.name} is a {info.kind} model, not a {what}; give a {what}'s card.")
    theirs = dict((src.get("architecture") or {}).get("options") or {})
    diff = [k for k in mine if k not in ignore and theirs.get(k, mine[k]) != mine[k]]
    if diff or not theirs:
        shown = ", ".join(f"{k} {theirs.get(k)!r} (this run {mine[k]!r})" for k in diff) or "no architecture options in its card"
        raise CmrError(f"{option} {init}: its network does not match this run's architecture ({shown}); "
                       f"train with the same --preset and --size as {info.name}, or start from another model.")
    verify(info)
    training = src.get("training") or {}
    data = list(training.get("data") or [])
    seen = sorted({str(d.get("dataset")) for d in data})
    record = {
        "name": info.name,
        "sha256": src["sha256"],
        "card": str(info.card_path),
        "data": [{k: d.get(k) for k in ("dataset", "cases", "slices", "licence")} for d in data],
        "datasets": seen,
        "public_only": bool(seen) and not set(seen) - PUBLIC_DATASETS,
        "iterations": training.get("iterations"),
        "held_out_case_prefixes": training.get("held_out_case_prefixes"),
    }
    return info, load_state(info.weights_path), record


def terms_for(summary: list[dict]) -> str:
    nc = sorted({d["dataset"] for d in summary} & NONCOMMERCIAL)
    if not nc:
        return "No non-commercial data was used."
    names = ", ".join({"acdc": "ACDC", "mnms": "M&Ms"}[x] for x in nc)
    return (f"Trained on {names} data: the weights inherit their research-only, non-commercial terms "
            "(cite the datasets; not for clinical use).")


def check_counts(**counts: int) -> None:
    """Every count option must be a positive whole number."""
    for name, v in counts.items():
        if v is None or int(v) < 1:
            raise CmrError(f"--{name.replace('_', '-')} {v} must be at least 1.")


def _seed_worker(worker_id: int) -> None:
    """A data-loading worker's own augmentation stream. Torch gives each worker a distinct seed drawn from the training
    process's random state when the loader starts, so a run with the same --workers draws the same augmentations. The
    workers live as long as the run (a resumed run starts new ones, seeded from the random state saved with it)."""
    info = torch.utils.data.get_worker_info()
    info.dataset.rng = np.random.default_rng(info.seed)


def loader_workers(workers: int, device) -> dict:
    """DataLoader options for ``workers`` loading processes (0: items are made in the training process, as before)."""
    if workers is None or int(workers) < 0:
        raise CmrError(f"--workers {workers} must be 0 (load in the training process) or more.")
    if not workers:
        return {"num_workers": 0}
    return {"num_workers": int(workers), "worker_init_fn": _seed_worker, "persistent_workers": True,
            "pin_memory": getattr(device, "type", str(device)) == "cuda"}


def endless(loader):
    """Batches forever: one pass of the loader per epoch."""
    if len(loader) == 0:
        raise CmrError("The training data gives no full batch; lower --batch or add data.")
    while True:
        yield from loader


def append_log(path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
