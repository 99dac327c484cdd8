"""Which renderer serves which model: a registry of kinds, filled from the ``cmrstudio.renderers`` entry points.

Every kind, cmrstudio's own (``spade``, ``diffusion``, ``flow``, registered by cmrstudio's own
distribution in :mod:`cmrstudio.engine.builtin`) and each plugin's, is registered by
:func:`register` from an entry point that returns :class:`~cmrstudio.api.RendererSpec` objects (the
public API, :mod:`cmrstudio.api`). Nothing else in cmrstudio switches on a generator's kind: it calls
:func:`open_renderer` and uses the protocol of :class:`~cmrstudio.engine.base.GeneratorFront`.

A plugin that fails to import, returns something else, was written for another major API version,
or claims a kind that is already served is named in one sentence in :data:`PROBLEMS` and skipped.
"""

from __future__ import annotations

import threading
from importlib.metadata import entry_points
from typing import Callable

from cmrstudio.api import API_MAJOR, API_VERSION, RENDERERS_GROUP, RendererSpec
from cmrstudio.engine.builtin import SCENE_SCHEME, is_scene_model  # noqa: F401  (kept importable from here)
from cmrstudio.errors import CmrError
from cmrstudio.models.checkpoint import ModelInfo

ENTRY_POINT_GROUP = RENDERERS_GROUP
BUILTIN_ENTRY = "cmrstudio.engine.builtin:renderers"

SPECS: dict[str, RendererSpec] = {}
SOURCES: dict[str, str] = {}  # kind -> the distribution (or entry point) that registered it
RENDERERS: dict[str, Callable] = {}  # kind -> factory (a view of SPECS)
PROBLEMS: list[str] = []  # one sentence per plugin that was skipped
_loaded = False
_lock = threading.RLock()


def register(spec: RendererSpec, source: str) -> bool:
    """Register one kind (what loading an entry point does for each spec it returns). False when skipped."""
    if not isinstance(spec, RendererSpec):
        PROBLEMS.append(f"The renderer plugin '{source}' returned a {type(spec).__name__}, not a cmrstudio.api.RendererSpec; it is skipped.")
        return False
    if not isinstance(spec.kind, str) or not spec.kind or not callable(spec.factory):
        PROBLEMS.append(f"The renderer plugin '{source}' gave a kind {spec.kind!r} without a callable factory; it is skipped.")
        return False
    if spec.api != API_MAJOR:
        PROBLEMS.append(f"The renderer plugin '{source}' was written for generator API {spec.api}, and this cmrstudio has API "
                        f"{API_VERSION}; its kind '{spec.kind}' is skipped (update the plugin).")
        return False
    if spec.kind in SPECS:
        PROBLEMS.append(f"The renderer plugin '{source}' claims the kind '{spec.kind}', which '{SOURCES[spec.kind]}' already "
                        "serves; the plugin's is skipped.")
        return False
    SPECS[spec.kind], SOURCES[spec.kind], RENDERERS[spec.kind] = spec, source, spec.factory
    return True


def load_entry(name: str, load: Callable[[], Callable], source: str) -> None:
    """Load one ``cmrstudio.renderers`` entry point and register what it returns; a failure is one sentence in PROBLEMS."""
    try:
        found = load()()
    except Exception as exc:  # a broken plugin must not break the others
        PROBLEMS.append(f"The renderer plugin '{source}' failed to load ({type(exc).__name__}: {exc}); it is skipped.")
        return
    for spec in found if isinstance(found, (list, tuple)) else [found]:
        register(spec, source)


def _source(ep) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} ({ep.name})" if dist is not None and dist.name != "cmrstudio" else ("cmrstudio" if dist is not None else ep.name)


def _load_plugins() -> None:
    global _loaded
    with _lock:
        if _loaded:
            return
        _loaded = True
        eps = list(entry_points(group=ENTRY_POINT_GROUP))
        # cmrstudio's own distribution first, so its kinds are the ones a clash keeps
        eps.sort(key=lambda ep: ep.value != BUILTIN_ENTRY)
        if not any(ep.value == BUILTIN_ENTRY for ep in eps):
            # cmrstudio's metadata is absent (run from a source tree, or a bundle without it): the same entry, loaded the same way
            from importlib import import_module

            mod, attr = BUILTIN_ENTRY.split(":")
            load_entry("builtin", lambda: getattr(import_module(mod), attr), "cmrstudio")
        for ep in eps:
            load_entry(ep.name, ep.load, _source(ep))


def reload_plugins() -> None:
    """Forget every registration and read the entry points again (after installing a plugin, and in tests)."""
    global _loaded
    with _lock:
        SPECS.clear(), SOURCES.clear(), RENDERERS.clear(), PROBLEMS.clear()
        _loaded = False
    _load_plugins()


def generator_kinds() -> tuple[str, ...]:
    """Every kind of model that renders images (built in and from plugins)."""
    _load_plugins()
    return tuple(SPECS)


def live_kinds() -> tuple[str, ...]:
    """Kinds offered for the live path (one network pass a render)."""
    _load_plugins()
    return tuple(k for k, s in SPECS.items() if s.live)


def hq_kinds() -> tuple[str, ...]:
    """Kinds offered for HQ renders (step-wise sampling with previews and cancel)."""
    _load_plugins()
    return tuple(k for k, s in SPECS.items() if s.steps)


def renderer_problems() -> list[str]:
    _load_plugins()
    return list(PROBLEMS)


def open_renderer(model: str | ModelInfo | None = None, device: str | None = None, threads: int | None = None, **options):
    """A renderer for any generator model (a name, a card path or a :class:`ModelInfo`).

    ``options`` (steps, guidance, solver) apply to step-wise models only; SPADE refuses them. ``layout_prior`` (any scene
    model): the layout model fully synthetic renders take their tissue classes from, instead of the card's (a layout bank
    of a site's own scans, say; see :meth:`~cmrstudio.engine.scene.SceneMixin.use_layout_prior`).
    """
    from cmrstudio.engine.base import GeneratorFront
    from cmrstudio.models.registry import get_model

    kinds = generator_kinds()
    info = model if isinstance(model, ModelInfo) else get_model(model, kind=kinds)
    spec = SPECS.get(info.kind)
    if spec is None:
        why = [p for p in PROBLEMS if f"'{info.kind}'" in p]
        raise CmrError(f"The model '{info.name}' is of kind '{info.kind}', which no installed renderer serves"
                       + (f" ({why[0]})" if why else "; install the plugin that provides it") + ".")
    source = SOURCES[info.kind]
    layout = options.pop("layout_prior", None)
    try:
        r = spec.factory(info, device=device, threads=threads, **options)
    except CmrError:
        raise
    except Exception as exc:
        raise CmrError(f"The model '{info.name}' could not be opened by its renderer from '{source}' ({type(exc).__name__}: {exc}).") from None
    if not isinstance(r, GeneratorFront):
        raise CmrError(f"The renderer from '{source}' opened '{info.name}' as a {type(r).__name__}, not a cmrstudio.api.GeneratorFront; "
                       "the model cannot be used.")
    r.source = source
    if layout is not None:
        if not getattr(r, "scene", False):
            raise CmrError(f"--layout-prior {layout}: '{info.name}' renders the heart crop only and takes no tissue classes; give a "
                           "scene model (spade-cmr, flow-cmr).")
        r.use_layout_prior(layout)
    return r
