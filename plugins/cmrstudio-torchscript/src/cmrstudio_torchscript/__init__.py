"""cmrstudio-torchscript: mask-to-image networks trained elsewhere, loaded from a folder (generator API 1).

A model is a folder holding ``model.pt`` (TorchScript, e.g. ``torch.jit.trace(net, ...).save``) and
``card.json``. Folders are found in ``$CMRSTUDIO_TORCHSCRIPT`` (one or more folders separated by
``:``; each may be a model folder or hold model folders), else ``~/.local/share/cmrstudio/torchscript``
(``$XDG_DATA_HOME``), plus the example shipped with this plugin. The card (see README.md)::

    {"format": "cmrstudio-torchscript", "format_version": 1, "name": "my-gan",
     "frame": {"size": 128, "spacing_mm": 1.25},
     "labels": ["background", "LV blood pool", "LV myocardium", "RV blood pool"],
     "vendors": ["siemens", "unknown"], "latent_dim": 32, "output_range": [-1, 1],
     "sha256": "<sha256 of model.pt>", "terms": "...", "description": "..."}

The network is called as ``net(onehot)`` or, with ``latent_dim`` > 0, ``net(onehot, z)``: ``onehot``
(B, L, N, N) float, one channel per label in the card's order (cmrstudio's canonical labels), ``z``
(B, latent_dim) drawn from N(0, I) with the render's seed; it returns (B, 1, N, N) or (B, N, N) in
``output_range``. TorchScript is code: install only model folders you trust (the sha256 is checked
before the file is loaded).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

__version__ = "0.1.0"
KIND = "torchscript"
CARD = "card.json"
WEIGHTS = "model.pt"
ENV = "CMRSTUDIO_TORCHSCRIPT"
FORMAT = "cmrstudio-torchscript"


def user_folder() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cmrstudio" / "torchscript"


def folders() -> list[Path]:
    """Where model folders are looked for: $CMRSTUDIO_TORCHSCRIPT (or the user folder), then the shipped examples."""
    env = os.environ.get(ENV)
    roots = [Path(p) for p in env.split(os.pathsep) if p] if env else [user_folder()]
    return roots + [Path(__file__).parent / "examples"]


def _model_dirs(root: Path) -> list[Path]:
    if (root / CARD).is_file():
        return [root]
    return sorted(p for p in root.iterdir() if (p / CARD).is_file()) if root.is_dir() else []


def read_folder(folder: str | Path):
    """A model folder -> :class:`cmrstudio.api.ModelInfo` (kind ``torchscript``); a bad card -> CmrError in one sentence."""
    from cmrstudio.api import LABELS, VENDORS, CmrError, model_info

    folder = Path(folder)
    cp = folder / CARD
    try:
        card = json.loads(cp.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CmrError(f"The TorchScript card {cp} cannot be read ({exc}); fix or remove the folder.") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise CmrError(f"The card {cp} is not a '{FORMAT}' card (its 'format' must say so).")
    if card.get("format_version") != 1:
        raise CmrError(f"The TorchScript card {cp} has format_version {card.get('format_version')!r}; this plugin reads 1.")
    name = card.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise CmrError(f"The TorchScript card {cp} needs a 'name' of letters, digits, '.', '_' or '-'.")
    frame = card.get("frame") or {}
    size, spacing = frame.get("size"), frame.get("spacing_mm")
    if not isinstance(size, int) or not 16 <= size <= 1024:
        raise CmrError(f"The TorchScript card {cp} needs frame.size, the square frame's pixels (16–1024), not {size!r}.")
    if spacing is not None and (not isinstance(spacing, (int, float)) or not 0.1 <= spacing <= 10):
        raise CmrError(f"The TorchScript card {cp} has frame.spacing_mm {spacing!r}; give mm per pixel (0.1–10) or null.")
    labels = card.get("labels")
    names = [LABELS[i] for i in sorted(LABELS)]  # canonical: 0 background, 1 LV blood pool, 2 LV myocardium, 3 RV blood pool
    canon = [s.lower() for s in names]
    if not isinstance(labels, list) or not 2 <= len(labels) <= len(LABELS) or [str(s).lower() for s in labels] != canon[:len(labels)]:
        raise CmrError(f"The TorchScript card {cp} lists labels {labels!r}; they must be cmrstudio's canonical labels in order: "
                       f"{', '.join(names)}.")
    vendors = card.get("vendors", ["unknown"])
    if not isinstance(vendors, list) or not vendors or any(v not in VENDORS for v in vendors):
        raise CmrError(f"The TorchScript card {cp} lists vendors {vendors!r}; use {', '.join(VENDORS)}.")
    latent = card.get("latent_dim", 0)
    rng = card.get("output_range", [0, 1])
    if not isinstance(latent, int) or latent < 0 or rng not in ([0, 1], [-1, 1]):
        raise CmrError(f"The TorchScript card {cp} needs latent_dim ≥ 0 and output_range [0, 1] or [-1, 1].")
    sha = card.get("sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise CmrError(f"The TorchScript card {cp} has no valid sha256 of {WEIGHTS}; add it (sha256sum {WEIGHTS}).")
    full = {**card, "kind": KIND, "sha256": sha, "weights": WEIGHTS,
            "architecture": {"name": "torchscript", "options": {"latent_dim": latent, "output_range": rng, "n_labels": len(labels)}},
            "frame": {"size": size, "spacing_mm": spacing, "crop": "heart-centred"},
            "labels": {str(i): names[i] for i in range(len(labels))}, "vendors_trained": vendors,
            "plugin": "cmrstudio-torchscript", "folder": str(folder)}
    return model_info(full, cp, folder / WEIGHTS)


def models() -> list:
    """For the ``cmrstudio.generators`` entry point: a ModelInfo per model folder, or the CmrError that names a bad one."""
    from cmrstudio.api import CmrError

    out: list = []
    for root in folders():
        for d in _model_dirs(root):
            try:
                out.append(read_folder(d))
            except CmrError as exc:
                out.append(exc)
    return out


def _renderer_class():
    from cmrstudio_torchscript.renderer import TorchScriptRenderer

    return TorchScriptRenderer


def renderers():
    from cmrstudio.api import one_pass_renderer

    return [one_pass_renderer(KIND, _renderer_class, "a one-pass TorchScript network",
                              description="a TorchScript mask-to-image network from a folder")]
