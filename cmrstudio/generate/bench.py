"""Throughput of ``cmrstudio generate``: slices per second with N local Ray workers (spade-cmr, parametric anatomy).

``python -m cmrstudio.generate.bench --workers 1 2 --cases 8`` prints one JSON line per worker count;
``cmrstudio bench serve`` calls :func:`generate_throughput`.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path


def _recipe(n: int, slices: int, model: str) -> dict:
    return {"cases": n, "seed": 2026, "shard_size": 1, "anatomy": [{"kind": "parametric", "slices": slices}],
            "vendors": ["siemens", "philips", "ge", "canon"], "models": [model], "output": {"format": "nnunet", "name": "Bench"}}


def generate_throughput(workers: int, n: int = 8, slices: int = 4, model: str = "spade-cmr") -> dict:
    """Generate ``n`` cases of ``slices`` slices on a local Ray instance with ``workers`` CPU actors (one torch thread
    each) and measure slices per second: over the whole run (actor start and model load included) and in the steady
    state (from the first finished shard to the last). Uses the Ray already initialised, if any (else starts one
    with ``num_cpus=workers`` and shuts it down after)."""
    import ray

    from cmrstudio.generate.run import generate

    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=int(workers), include_dashboard=False, log_to_driver=False, configure_logging=False)
        started = True
    try:
        with tempfile.TemporaryDirectory(prefix="cmr-gen-bench-") as tmp:
            rpath = Path(tmp) / "recipe.json"
            rpath.write_text(json.dumps(_recipe(int(n), int(slices), model)))
            out = Path(tmp) / "out"
            finished: list[float] = []
            watcher = _ShardWatcher(out / "shards", finished)
            watcher.start()
            t0 = time.perf_counter()
            rep = generate(rpath, out, use_ray=True, workers=int(workers), progress=False, stop_after=None)
            wall = time.perf_counter() - t0
            watcher.stop()
            total = rep.slices_rendered
            steady = None
            if len(finished) >= 2 and finished[-1] > finished[0]:
                steady = (len(finished) - 1) * slices / (finished[-1] - finished[0])
            return {"workers": int(workers), "model": model, "cases": int(n), "slices": int(total),
                    "seconds": round(wall, 2), "render_seconds": round(rep.render_seconds, 2),
                    "slices_per_s": round(total / rep.render_seconds, 3) if rep.render_seconds else None,
                    "steady_slices_per_s": round(steady, 3) if steady else None, "where": rep.where}
    finally:
        if started:
            ray.shutdown()


class _ShardWatcher:
    """Notes when each shard folder appears (polling: the shards are renamed into place whole)."""

    def __init__(self, folder: Path, times: list[float]):
        import threading

        self.folder, self.times, self._stop = folder, times, threading.Event()
        self._seen: set[str] = set()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=2)
        self._poll()

    def _poll(self):
        if self.folder.is_dir():
            for p in sorted(self.folder.glob("shard-*")):
                if p.name not in self._seen:
                    self._seen.add(p.name)
                    self.times.append(time.perf_counter())

    def _run(self):
        while not self._stop.wait(0.05):
            self._poll()


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--model", default="spade-cmr")
    a = ap.parse_args(argv)
    for w in a.workers:
        print(json.dumps(generate_throughput(w, a.cases, a.slices, a.model)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
