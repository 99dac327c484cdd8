"""Which models are installed, and building a network from one.

Models are found in three places, in this order (a later one with the same name
does not replace an earlier one; the clash is reported by ``list_models``):

1. shipped with cmrstudio: ``resources/models/*.json``;
2. the user's models folder: ``$CMRSTUDIO_MODELS``, else ``$XDG_DATA_HOME/cmrstudio/models``
   (``~/.local/share/cmrstudio/models``); ``cmrstudio train`` can write there;
3. plugins: the ``cmrstudio.generators`` entry-point group. Each entry point names a
   callable that returns a card path, a folder of cards, or a list of those.

``--model`` also accepts a path to a card or weights file directly.
"""

from __future__ import annotations

import os
import warnings
from importlib.metadata import entry_points
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where weights are loaded, so listing models stays light
    import torch

from cmrstudio.errors import CmrError
from cmrstudio.models.checkpoint import CARD_SUFFIX, WEIGHTS_SUFFIX, ModelInfo, load_state, read_card, verify
from cmrstudio.resources import resources_dir

ENTRY_POINT_GROUP = "cmrstudio.generators"
DEFAULT_MODELS = {"spade": "spade-cmr", "flow": "flow-cmr", "segmenter": "seg-cmr", "layout": "layout-cmr"}
GENERATOR_KINDS = ("spade", "diffusion", "flow")


def shipped_dir() -> Path:
    return resources_dir() / "models"


def user_dir() -> Path:
    env = os.environ.get("CMRSTUDIO_MODELS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cmrstudio" / "models"


def _cards_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f"*{CARD_SUFFIX}"))


def _plugin_cards() -> list[Path]:
    out: list[Path] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found = ep.load()()
        except Exception as exc:  # a broken plugin must not break the studio
            warnings.warn(f"The cmrstudio.generators plugin '{ep.name}' failed to load ({exc}); it is skipped.")
            continue
        items = found if isinstance(found, (list, tuple)) else [found]
        for it in items:
            p = Path(it)
            out.extend(_cards_in(p) if p.is_dir() else [p])
    return out


def list_models(kind: str | None = None, problems: list[str] | None = None) -> list[ModelInfo]:
    """Every installed model (optionally of one kind). Unreadable cards go to ``problems``."""
    seen: dict[str, ModelInfo] = {}
    sources = [("shipped", _cards_in(shipped_dir())), ("user", _cards_in(user_dir())), ("plugin", _plugin_cards())]
    for origin, cards in sources:
        for cp in cards:
            try:
                info = read_card(cp, origin=origin)
            except CmrError as exc:
                if problems is not None:
                    problems.append(exc.message)
                continue
            except (OSError, ValueError, TypeError, AttributeError) as exc:  # one bad card must not hide the others
                if problems is not None:
                    problems.append(f"The model card {cp} cannot be used ({type(exc).__name__}: {exc}).")
                continue
            if info.name in seen:
                if problems is not None:
                    problems.append(f"{cp} is named '{info.name}' like {seen[info.name].card_path}; the first one is used.")
                continue
            seen[info.name] = info
    return [m for m in seen.values() if kind is None or m.kind == kind]


def get_model(name: str | Path | None = None, kind: str | tuple[str, ...] | None = "spade") -> ModelInfo:
    """Find a model by name (or card/weights path); without a name, the default of ``kind``.

    A kind's name (``spade``, ``diffusion``, ``flow``, ``segmenter``) stands for its default
    model when no installed model has that name, so ``--model diffusion`` works.
    ``kind`` may be a tuple of acceptable kinds (the first one's default is used without a name).
    """
    kinds = (kind,) if isinstance(kind, str) else tuple(kind or ())
    if name is None:
        if not kinds or kinds[0] not in DEFAULT_MODELS:
            raise CmrError(f"There is no default model of kind '{kind}'; name one with --model.")
        name = DEFAULT_MODELS[kinds[0]]
    text = str(name)
    p = Path(text)
    if p.suffix in (CARD_SUFFIX, WEIGHTS_SUFFIX) or p.exists():
        info = read_card(p, origin="path")
    else:
        models = list_models()
        match = [m for m in models if m.name == text]
        if not match and text in DEFAULT_MODELS:
            match = [m for m in models if m.name == DEFAULT_MODELS[text]]
        if not match:
            names = ", ".join(m.name for m in models) or "none"
            raise CmrError(f"No model is named '{text}'; installed: {names} (`cmrstudio models` lists them).")
        info = match[0]
    if kinds and info.kind not in kinds:
        raise CmrError(f"The model '{info.name}' is a {info.kind} model, not a {' or '.join(kinds)} model.")
    return info


def _architecture(info: ModelInfo) -> torch.nn.Module:
    options = info.card.get("architecture", {}).get("options", {})
    try:
        if info.kind == "spade":
            from cmrstudio.models.spade import SpadeConfig, build_generator

            return build_generator(SpadeConfig.from_dict(options))
        if info.kind in ("diffusion", "flow"):
            from cmrstudio.models.diffusion import CondUNet, DiffusionConfig

            return CondUNet(DiffusionConfig.from_dict(options))
        if info.kind == "segmenter":
            from cmrstudio.models.unet import UNet, UNetConfig

            return UNet(UNetConfig.from_dict(options))
    except (TypeError, ValueError) as exc:
        raise CmrError(f"The card {info.card_path} describes an architecture cmrstudio cannot build ({exc}).") from None
    raise CmrError(f"The model '{info.name}' is of kind '{info.kind}', which this cmrstudio cannot build.")


def build_model(info: ModelInfo, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Verify the checksum, build the network from the card's options and load the weights."""
    verify(info)
    state = load_state(info.weights_path)
    net = _architecture(info)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CmrError(f"The weights {info.weights_path} do not fit the architecture in their card ({first}); retrain or re-copy the pair.") from None
    return net.to(device).eval()


def install_model(info: ModelInfo, replace: bool = False) -> ModelInfo:
    """Copy a model (weights, then card) into the user's models folder, atomically."""
    import shutil

    from cmrstudio.io.common import atomic_path

    dest = user_dir()
    dest.mkdir(parents=True, exist_ok=True)
    card_dest = dest / info.card_path.name
    if card_dest.exists() and not replace:
        raise CmrError(f"{card_dest} already exists; remove it or give the new model another --name.")
    verify(info)
    for src in (info.weights_path, info.card_path):
        with atomic_path(dest / src.name) as tmp:
            shutil.copyfile(src, tmp)
    return read_card(card_dest, origin="user")
