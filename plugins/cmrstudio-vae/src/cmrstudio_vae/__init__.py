"""cmrstudio-vae: a conditional VAE mask-to-image baseline, as a cmrstudio plugin (generator API 1).

Entry points (see pyproject.toml): ``cmrstudio.renderers`` -> :func:`renderers` (the kind ``vae``,
offered for the live path: one network pass), ``cmrstudio.generators`` -> :func:`models` (the
shipped ``vae-cmr`` model: weights + card with their sha256). Nothing here imports torch until a
model is opened.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"
KIND = "vae"


def _renderer_class():
    from cmrstudio_vae.renderer import VAERenderer

    return VAERenderer


def renderers():
    from cmrstudio.api import one_pass_renderer

    return [one_pass_renderer(KIND, _renderer_class, "a VAE (one pass, no steps or guidance)",
                              description="conditional VAE baseline: one decoder pass")]


def models() -> Path:
    return Path(__file__).parent / "models"
