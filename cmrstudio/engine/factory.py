"""Which renderer serves which model: a registry of kinds, extended by plugins.

``RENDERERS`` maps a model kind (the card's ``kind``) to a factory ``(info, device, threads,
**options) -> GeneratorFront``. The built-in kinds (``spade``, ``diffusion``, ``flow``) are
registered here like any other; a plugin adds its own with an entry point in the group
``cmrstudio.renderers`` naming a callable that returns ``{kind: factory}``. Nothing else in
cmrstudio switches on a generator's kind: it calls :func:`open_renderer` and uses the protocol
of :class:`~cmrstudio.engine.base.GeneratorFront`.
"""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points
from typing import Callable

from cmrstudio.errors import CmrError
from cmrstudio.models.checkpoint import ModelInfo

ENTRY_POINT_GROUP = "cmrstudio.renderers"
SCENE_SCHEME = "scene-v1"


def is_scene_model(info: ModelInfo) -> bool:
    """A scene model renders whole slices (heart, tissue classes, context); the others the heart crop."""
    return (info.card.get("conditioning") or {}).get("scheme") == SCENE_SCHEME


def _spade(info: ModelInfo, device=None, threads=None, bf16: bool | None = False, **options):
    from cmrstudio.engine.live import Renderer, SceneRenderer

    given = [k for k, v in options.items() if v is not None]
    if given:
        raise CmrError(f"--{'/--'.join(given)} applies to diffusion and flow models; '{info.name}' is a SPADE model (one step, no guidance).")
    cls = SceneRenderer if is_scene_model(info) else Renderer
    return cls(info, device=device, threads=threads, bf16=bf16)


def _hq(info: ModelInfo, device=None, threads=None, **options):
    from cmrstudio.engine.hq import HQRenderer, SceneHQRenderer

    cls = SceneHQRenderer if is_scene_model(info) else HQRenderer
    return cls(info, device=device, threads=threads, **options)


RENDERERS: dict[str, Callable] = {"spade": _spade, "diffusion": _hq, "flow": _hq}
_plugins_loaded = False


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found = ep.load()()
            if not isinstance(found, dict) or not all(isinstance(k, str) and callable(v) for k, v in found.items()):
                raise TypeError("it must return a dict of model kind -> renderer factory")
        except Exception as exc:  # a broken plugin must not break the others
            warnings.warn(f"The cmrstudio.renderers plugin '{ep.name}' failed to load ({type(exc).__name__}: {exc}); it is skipped.")
            continue
        for kind, factory in found.items():
            RENDERERS.setdefault(kind, factory)


def generator_kinds() -> tuple[str, ...]:
    """Every kind of model that renders images (built in and from plugins)."""
    _load_plugins()
    return tuple(RENDERERS)


def open_renderer(model: str | ModelInfo | None = None, device: str | None = None, threads: int | None = None, **options):
    """A renderer for any generator model (a name, a card path or a :class:`ModelInfo`).

    ``options`` (steps, guidance, solver) apply to step-wise models only; SPADE refuses them.
    """
    from cmrstudio.models.registry import get_model

    kinds = generator_kinds()
    info = model if isinstance(model, ModelInfo) else get_model(model, kind=kinds)
    factory = RENDERERS.get(info.kind)
    if factory is None:
        raise CmrError(f"The model '{info.name}' is of kind '{info.kind}', which no installed renderer serves.")
    return factory(info, device=device, threads=threads, **options)
