"""cmrstudio's own renderers, registered through the public generator API like any plugin's.

cmrstudio's ``pyproject.toml`` names :func:`renderers` in the ``cmrstudio.renderers`` entry-point
group, the group plugins use; :mod:`cmrstudio.engine.factory` loads it with the same code.
"""

from __future__ import annotations

from cmrstudio.api import RendererSpec, renderer
from cmrstudio.errors import CmrError

SCENE_SCHEME = "scene-v1"


def is_scene_model(info) -> bool:
    """A scene model renders whole slices (heart, tissue classes, context); the others the heart crop."""
    return (info.card.get("conditioning") or {}).get("scheme") == SCENE_SCHEME


def open_spade(info, device=None, threads=None, bf16: bool | None = False, **options):
    from cmrstudio.engine.live import Renderer, SceneRenderer

    given = ["no-spectrum-gain" if k == "spectrum_gain" else k for k, v in options.items() if v is not None]
    if given:
        raise CmrError(f"--{'/--'.join(given)} applies to diffusion and flow models; '{info.name}' is a SPADE model (one step, no guidance).")
    cls = SceneRenderer if is_scene_model(info) else Renderer
    return cls(info, device=device, threads=threads, bf16=bf16)


def open_hq(info, device=None, threads=None, **options):
    from cmrstudio.engine.hq import HQRenderer, SceneHQRenderer

    cls = SceneHQRenderer if is_scene_model(info) else HQRenderer
    return cls(info, device=device, threads=threads, **options)


def renderers() -> list[RendererSpec]:
    return [
        renderer("spade", open_spade, live=True, description="SPADE GAN: one network pass, the live model"),
        renderer("diffusion", open_hq, steps=True, description="mask-conditioned DDIM diffusion, step by step"),
        renderer("flow", open_hq, steps=True, description="rectified flow, 1-10 ODE steps"),
    ]
