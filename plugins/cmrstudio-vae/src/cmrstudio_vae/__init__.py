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


def open_vae(info, device=None, threads=None, bf16=None, **options):
    from cmrstudio.api import CmrError

    given = [k for k, v in options.items() if v is not None]
    if given:
        raise CmrError(f"--{'/--'.join(given)} applies to step-wise models; '{info.name}' is a VAE (one pass, no steps or guidance).")
    from cmrstudio_vae.renderer import VAERenderer

    return VAERenderer(info, device=device, threads=threads)


def renderers():
    from cmrstudio.api import renderer

    return [renderer(KIND, open_vae, live=True, description="conditional VAE baseline: one decoder pass")]


def models() -> Path:
    return Path(__file__).parent / "models"
