"""Which models are installed, and building a network from one.

Models are found in three places, in this order (a later one with the same name
does not replace an earlier one; the clash is reported by ``list_models``):

1. shipped with cmrstudio: ``resources/models/*.json``;
2. the user's models folder: ``$CMRSTUDIO_MODELS``, else ``$XDG_DATA_HOME/cmrstudio/models``
   (``~/.local/share/cmrstudio/models``); ``cmrstudio train`` can write there;
3. plugins: the ``cmrstudio.generators`` entry-point group (see :mod:`cmrstudio.api`). Each entry
   point names a callable that returns a card path, a folder of cards, a
   :class:`~cmrstudio.models.checkpoint.ModelInfo` (a model in a format of its own), or a list of
   those. A plugin's model is listed only when a renderer serves its kind and its weights match the
   sha256 in its card; otherwise it is named in one sentence (``problems``) and skipped.

``--model`` also accepts a path to a card or weights file directly.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where weights are loaded, so listing models stays light
    import torch

from cmrstudio.errors import CmrError
from cmrstudio.models.checkpoint import CARD_SUFFIX, WEIGHTS_SUFFIX, ModelInfo, load_state, read_card, sha256_file, verify
from cmrstudio.resources import resources_dir

ENTRY_POINT_GROUP = "cmrstudio.generators"
# the HQ default is flow-cmr-fine distilled to two steps (its teacher, flow-cmr-fine, stays installed and can be named)
DEFAULT_MODELS = {"spade": "spade-cmr", "flow": "flow-cmr-fine-2step", "segmenter": "seg-cmr", "layout": "layout-cmr"}
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


_verified: dict[tuple[str, int, int], str] = {}  # (weights path, size, mtime) -> its sha256, for plugin models


def _plugin_cards(problems: list[str]) -> list[tuple[str, Path | ModelInfo]]:
    """What the ``cmrstudio.generators`` entry points return: (plugin, card path or ModelInfo); failures go to ``problems``."""
    out: list[tuple[str, Path | ModelInfo]] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        plugin = dist.name if dist is not None else ep.name
        try:
            found = ep.load()()
        except Exception as exc:  # a broken plugin must not break the studio
            problems.append(f"The model plugin '{plugin}' failed to load ({type(exc).__name__}: {exc}); it is skipped.")
            continue
        items = found if isinstance(found, (list, tuple)) else [found]
        for it in items:
            if isinstance(it, Exception):  # the plugin's own one-sentence report of a model it could not read
                problems.append(f"The plugin '{plugin}' skipped a model: {getattr(it, 'message', None) or it}")
            elif isinstance(it, ModelInfo):
                out.append((plugin, it))
            elif isinstance(it, (str, Path)):
                p = Path(it)
                out.extend((plugin, c) for c in (_cards_in(p) if p.is_dir() else [p]))
            else:
                problems.append(f"The model plugin '{plugin}' returned a {type(it).__name__}; it must return card paths, folders "
                                "or cmrstudio.api.ModelInfo objects, so that item is skipped.")
    return out


def _check_plugin_model(info: ModelInfo, plugin: str) -> None:
    """A plugin's model must be servable and its weights present and matching the card (checked once per file version)."""
    from cmrstudio.engine.factory import generator_kinds

    if info.kind not in generator_kinds() + ("segmenter", "layout"):
        raise CmrError(f"The model '{info.name}' of the plugin '{plugin}' is of kind '{info.kind}', which no installed renderer "
                       "serves; it is skipped.")
    wp = info.weights_path
    try:
        st = wp.stat()
    except OSError:
        raise CmrError(f"The model '{info.name}' of the plugin '{plugin}' has no weights file ({wp}); it is skipped.") from None
    key = (str(wp), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        _verified[key] = sha256_file(wp)
    if _verified[key] != info.card.get("sha256"):
        raise CmrError(f"The weights of the model '{info.name}' of the plugin '{plugin}' do not match the sha256 in its card "
                       f"({_verified[key][:12]}… ≠ {str(info.card.get('sha256'))[:12]}…); it is skipped.")


def plugin_problems() -> list[str]:
    """One sentence for each plugin (renderer or model) that is skipped."""
    problems: list[str] = []
    list_models(problems=problems)
    return [p for p in problems if "plugin" in p]


def list_models(kind: str | None = None, problems: list[str] | None = None) -> list[ModelInfo]:
    """Every installed model (optionally of one kind). Unreadable cards go to ``problems``, and so do plugins that
    fail to load and plugin models whose weights are missing or do not match their card (those are skipped)."""
    from cmrstudio.engine.factory import renderer_problems

    found: list[str] = [] if problems is None else problems
    found.extend(renderer_problems())
    seen: dict[str, ModelInfo] = {}
    sources = [("shipped", c, None) for c in _cards_in(shipped_dir())] + [("user", c, None) for c in _cards_in(user_dir())]
    sources += [("plugin", c, plugin) for plugin, c in _plugin_cards(found)]
    for origin, cp, plugin in sources:
        try:
            info = cp if isinstance(cp, ModelInfo) else read_card(cp, origin=origin)
            if plugin is not None:
                info.origin = "plugin"
                info.card.setdefault("plugin", plugin)
                _check_plugin_model(info, plugin)
        except CmrError as exc:
            found.append(exc.message)
            continue
        except (OSError, ValueError, TypeError, AttributeError) as exc:  # one bad card must not hide the others
            found.append(f"The model card {cp} cannot be used ({type(exc).__name__}: {exc}).")
            continue
        if info.name in seen:
            found.append(f"{info.card_path} is named '{info.name}' like {seen[info.name].card_path}; the first one is used.")
            continue
        seen[info.name] = info
    return [m for m in seen.values() if kind is None or m.kind == kind]


def live_models() -> list[ModelInfo]:
    """Models offered for the live path: those whose renderer is one network pass (SPADE, a VAE plugin, ...)."""
    from cmrstudio.engine.factory import live_kinds

    kinds = live_kinds()
    return [m for m in list_models() if m.kind in kinds]


def hq_models() -> list[ModelInfo]:
    """Models offered for HQ renders: step-wise sampling with previews and cancel (diffusion, flow, plugins that step)."""
    from cmrstudio.engine.factory import hq_kinds

    kinds = hq_kinds()
    return [m for m in list_models() if m.kind in kinds]


def hq_model_name(setting: str | None) -> str | None:
    """The installed model an HQ setting names (a model's name, a kind such as ``flow``, or None for the default HQ
    model), or None when it names nothing installed."""
    try:
        return get_model(setting, kind=None if setting else "flow").name
    except CmrError:
        return None


def priors_named(info: ModelInfo) -> list[str]:
    """The layout models a model's card names: a scene model's tissue-class prior, a fine prior's coarse prior."""
    cond = info.card.get("conditioning")
    if not isinstance(cond, dict):
        return []
    refs = (cond.get(key) for key in ("layout_prior", "coarse_prior"))
    return [str(r["name"]) for r in refs if isinstance(r, dict) and r.get("name")]


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
        if info.kind == "layout" and info.card.get("architecture", {}).get("class", "").endswith(".CategoricalUNet"):
            from cmrstudio.models.diffusion import CategoricalUNet, DiffusionConfig

            return CategoricalUNet(DiffusionConfig.from_dict(options))
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
    """Copy a model (weights, then card) into the user's models folder, atomically; with the discriminator and critic its
    run kept (train_state/, or its own NAME.adversaries/) into NAME.adversaries/ there, so a later --init goes on with them."""
    import shutil

    from cmrstudio.io.common import atomic_path
    from cmrstudio.models.checkpoint import ADVERSARIES, adversaries_dir, adversaries_of

    dest = user_dir()
    dest.mkdir(parents=True, exist_ok=True)
    card_dest = dest / info.card_path.name
    if card_dest.exists() and not replace:
        raise CmrError(f"{card_dest} already exists; remove it or give the new model another --name.")
    verify(info)
    found = [f for f in (adversaries_of(info.card_path) / n for n in ADVERSARIES) if f.is_file()]
    adv = adversaries_dir(card_dest)
    if adv.is_dir():  # a replaced model's: they were trained against other weights
        shutil.rmtree(adv)
    if found:
        adv.mkdir()
        for src in found:
            with atomic_path(adv / src.name) as tmp:
                shutil.copyfile(src, tmp)
    for src in (info.weights_path, info.card_path):
        with atomic_path(dest / src.name) as tmp:
            shutil.copyfile(src, tmp)
    return read_card(card_dest, origin="user")
