"""Model files: weights in safetensors beside a JSON model card.

A model named ``NAME`` is two files in one folder: ``NAME.safetensors`` (the
weights, nothing executable) and ``NAME.json`` (the card). The card records what
the model is (kind, architecture and its options, frame, label scheme, vendors),
how it was made (data with counts and licences, iterations, hardware, time), what
was measured, and the sha256 of the weights file, which is checked on every load.

Cards carry ``format_version``; a card from a newer cmrstudio is refused with a
sentence saying so instead of being half-read.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where weights are loaded, so listing models stays light
    import torch

from cmrstudio import __version__
from cmrstudio.anatomy import LABELS, VENDORS
from cmrstudio.errors import CmrError
from cmrstudio.io.common import atomic_path, jsonable, write_text_atomic

FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def label_scheme() -> dict[str, str]:
    return {str(k): v for k, v in enumerate(LABELS)}


@dataclass
class ModelInfo:
    """An installed model: its card and where its weights are."""

    name: str
    kind: str
    card_path: Path
    weights_path: Path
    origin: str  # shipped, user, plugin or path
    card: dict = field(repr=False)

    @property
    def vendors_trained(self) -> list[str]:
        return list(self.card.get("vendors_trained", self.card.get("vendors", [])))

    @property
    def size_mb(self) -> float:
        return self.weights_path.stat().st_size / 1e6 if self.weights_path.exists() else float("nan")

    def summary(self) -> dict[str, Any]:
        tr = self.card.get("training", {})
        return {
            "name": self.name,
            "kind": self.kind,
            "origin": self.origin,
            "size_mb": round(self.size_mb, 2),
            "resolution": self.card.get("frame", {}).get("size"),
            "vendors_trained": self.vendors_trained,
            "iterations": tr.get("iterations"),
            "card": str(self.card_path),
        }


def card_path_for(path: str | Path) -> Path:
    p = Path(path)
    if p.suffix == CARD_SUFFIX:
        return p
    if p.name.endswith(WEIGHTS_SUFFIX):
        return p.with_name(p.name[: -len(WEIGHTS_SUFFIX)] + CARD_SUFFIX)
    return p.with_name(p.name + CARD_SUFFIX)


ADVERSARIES = ("discriminator.safetensors", "critic.safetensors", "feature_critic.safetensors")  # what a GAN's next fine-tune needs


def adversaries_dir(card_path: str | Path) -> Path:
    """Where a model kept away from its run folder (shipped, installed) keeps the discriminator and critic it was trained
    against: NAME.adversaries/ beside its card. ``train spade --init`` looks there first, then in a run's train_state/;
    without them a fine-tune starts with fresh ones, which costs realism for thousands of steps (resources/models/README.md)."""
    p = Path(card_path)
    return p.with_name(p.name[: -len(CARD_SUFFIX)] + ".adversaries" if p.name.endswith(CARD_SUFFIX) else p.name + ".adversaries")


def adversaries_of(card_path: str | Path) -> Path:
    """The folder that holds a model's adversaries, where it has any: its NAME.adversaries/, else the train_state/ of the
    run folder its card is in (a checkpoint's card, in RUN/checkpoints/, has none there)."""
    kept = adversaries_dir(card_path)
    return kept if kept.is_dir() else Path(card_path).parent / "train_state"


def read_card(path: str | Path, origin: str = "path") -> ModelInfo:
    """Read and validate a model card (given the card or its weights file)."""
    cp = card_path_for(path)
    if not cp.exists():
        raise CmrError(f"{cp} does not exist; a model needs its card (NAME.json) beside its weights (NAME.safetensors).")
    try:
        card = json.loads(cp.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CmrError(f"The model card {cp} cannot be read ({exc.strerror or exc}).") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CmrError(f"The model card {cp} is not valid JSON ({exc}); restore it from the model's source or retrain.") from None
    if not isinstance(card, dict):
        raise CmrError(f"The model card {cp} is not a JSON object; restore it from the model's source or retrain.")
    fv = card.get("format_version")
    if not isinstance(fv, int):
        raise CmrError(f"The model card {cp} has no format_version; it was not written by cmrstudio.")
    if fv > FORMAT_VERSION:
        raise CmrError(
            f"The model {cp.stem} was written by cmrstudio {card.get('cmrstudio_version', '?')} (model format {fv}); "
            f"this cmrstudio {__version__} reads format {FORMAT_VERSION} — update cmrstudio to use it."
        )
    for key in ("name", "kind", "architecture", "sha256"):
        if key not in card:
            raise CmrError(f"The model card {cp} lacks '{key}'; restore it from the model's source or retrain.")
    weights = card.get("weights", cp.stem + WEIGHTS_SUFFIX)
    if not isinstance(weights, str) or Path(weights).name != weights or not weights.endswith(WEIGHTS_SUFFIX) or weights.startswith("."):
        raise CmrError(f"The model card {cp} names weights {weights!r}; it must be a plain NAME.safetensors file beside the card.")
    if not isinstance(card["sha256"], str) or not re.fullmatch(r"[0-9a-f]{64}", card["sha256"]):
        raise CmrError(f"The model card {cp} has no valid sha256 for its weights; restore it from the model's source or retrain.")
    if not isinstance(card["architecture"], dict):
        raise CmrError(f"The model card {cp} has a malformed 'architecture'; restore it from the model's source or retrain.")
    return ModelInfo(str(card["name"]), str(card["kind"]), cp, cp.with_name(weights), origin, card)


def verify(info: ModelInfo) -> None:
    """Check the weights file exists and matches the checksum in its card."""
    if not info.weights_path.exists():
        raise CmrError(f"The weights file {info.weights_path} of model '{info.name}' is missing; re-copy it or retrain.")
    digest = sha256_file(info.weights_path)
    if digest != info.card["sha256"]:
        raise CmrError(
            f"The weights file {info.weights_path} does not match the sha256 in its card "
            f"({digest[:12]}… ≠ {str(info.card['sha256'])[:12]}…); it is damaged or was replaced — re-copy it or retrain."
        )


def load_state(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CmrError(f"{path} is not a readable safetensors weights file ({exc}); re-copy it or retrain.") from None


def canonical_header(blob: bytes) -> bytes:
    """A safetensors file with its ``__metadata__`` map in key order.

    safetensors writes that map in the order of a Rust hash map, which changes from process to
    process, so the same tensors saved twice gave two checksums. Sorting it changes neither the
    header's length nor the data, so a file written here has one sha256 for one content."""
    import struct

    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", None)
    if meta is not None:
        header = {"__metadata__": dict(sorted(meta.items())), **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > n:  # never: the same keys and values in another order
        return blob
    return blob[:8] + text + b" " * (n - len(text)) + blob[8 + n:]


def save_state(path: str | Path, state: dict, metadata: dict[str, str] | None = None) -> Path:
    """Write torch tensors, or numpy arrays (models that need no torch), as one safetensors file, atomically; the same
    tensors and metadata give the same bytes (:func:`canonical_header`)."""
    import numpy as np

    path = Path(path)
    if all(isinstance(v, np.ndarray) for v in state.values()):
        from safetensors.numpy import save

        tensors = {k: np.ascontiguousarray(v) for k, v in state.items()}
    else:
        from safetensors.torch import save

        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    blob = canonical_header(save(tensors, metadata=metadata))
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(blob)
    return path


def save_model(folder: str | Path, name: str, state: dict, card: dict) -> ModelInfo:
    """Write NAME.safetensors, then NAME.json with the weights' sha256 (the card last)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wp = save_state(folder / f"{name}{WEIGHTS_SUFFIX}", state, {"cmrstudio_model": name, "kind": str(card.get("kind"))})
    card = {
        "format_version": FORMAT_VERSION,
        "cmrstudio_version": __version__,
        "name": name,
        **{k: v for k, v in card.items() if k not in ("format_version", "cmrstudio_version", "name")},
        "weights": wp.name,
        "weights_bytes": wp.stat().st_size,
        "sha256": sha256_file(wp),
    }
    card.setdefault("labels", label_scheme())
    card.setdefault("vendors", list(VENDORS))
    cp = write_text_atomic(folder / f"{name}{CARD_SUFFIX}", dump_card(card))
    return ModelInfo(name, str(card["kind"]), cp, wp, "path", card)


def update_card(info: ModelInfo, **fields: Any) -> ModelInfo:
    """Merge fields into a card (e.g. measured metrics) and rewrite it atomically."""
    card = {**info.card, **fields}
    write_text_atomic(info.card_path, dump_card(card))
    return ModelInfo(info.name, info.kind, info.card_path, info.weights_path, info.origin, card)


def dump_card(card: dict) -> str:
    return json.dumps(jsonable(card), indent=2, allow_nan=False) + "\n"
