"""Export a cmrstudio one-pass model (e.g. the VAE plugin's ``vae-cmr``) to a TorchScript model folder.

``python -m cmrstudio_torchscript.export --model vae-cmr --out DIR/NAME``: traces ``net(onehot, z)``
with torch.jit.trace, saves ``model.pt`` and writes ``card.json`` with its sha256, the frame, labels,
vendors and the source model's terms. Also how the shipped example was made.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch


def export(model: str, out: Path, name: str | None = None) -> Path:
    from cmrstudio.api import LABELS, sha256_file
    from cmrstudio.engine.factory import open_renderer

    r = open_renderer(model)
    latent = int(getattr(r.net.cfg, "z_dim", 0))
    oh = torch.zeros(1, r.n_labels, r.size, r.size)
    args = (oh, torch.zeros(1, latent)) if latent else (oh,)
    traced = torch.jit.trace(r.net.eval(), args, check_trace=False)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.pt.tmp"
    traced.save(str(tmp))
    os.replace(tmp, out / "model.pt")
    src = r.info.card
    card = {"format": "cmrstudio-torchscript", "format_version": 1, "name": name or out.name,
            "description": f"TorchScript export of the cmrstudio model '{r.name}' (sha256 {src['sha256'][:12]}…), "
                           "an example of a model folder made elsewhere.",
            "frame": {"size": r.size, "spacing_mm": r.spacing_mm},
            "labels": [LABELS[i] for i in range(r.n_labels)],
            "vendors": r.vendors_trained, "latent_dim": latent, "output_range": [-1, 1],
            "terms": src.get("terms"), "training": src.get("training"), "metrics": src.get("metrics"),
            "exported_from": {"model": r.name, "sha256": src["sha256"], "torch": torch.__version__},
            "sha256": sha256_file(out / "model.pt")}
    tmpc = out / "card.json.tmp"
    tmpc.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmpc, out / "card.json")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name")
    a = ap.parse_args(argv)
    print(f"wrote {export(a.model, a.out, a.name)}")


if __name__ == "__main__":
    main()
