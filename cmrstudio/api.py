"""cmrstudio's public generator API, for plugins that add mask-to-image generators.

**Version** :data:`API_VERSION` (``MAJOR.MINOR``). A plugin states the major version it was written
for (:attr:`RendererSpec.api`); a renderer written for another major version is named and skipped.
Minor versions only add.

**What a generator provides.** A renderer is a subclass of :class:`GeneratorFront` (the class the
built-in SPADE, diffusion and flow renderers subclass too) built from a :class:`ModelInfo`:

* ``info``: its card (a dict) and weights, with ``name`` and ``kind``;
* its frame: ``size`` (N: renders N×N) and ``spacing_mm`` (mm per pixel, or None), both from the
  card's ``frame``; ``n_labels`` (it reads the canonical labels 0 background, 1 LV blood pool,
  2 LV myocardium, 3 RV blood pool, :data:`LABELS`) and ``vendors_trained`` (of :data:`VENDORS`);
* a render call for a batch of framed masks with seeds: override ``_generate(framed, vendor_index,
  seed)``: checked masks (B, N, N) uint8, the vendor's index in :data:`VENDORS`, one seed for the
  batch or a list with one per mask -> images (B, N, N) float32 in [0, 1]. The base class turns it
  into ``render_framed``, ``render_slice`` (the live path) and ``render_volume``, with the input
  checks, vendor fallback and frames;
* ``load_network()``: build the network and load the weights (after :func:`verify`); the default
  builds cmrstudio's own architectures from the card;
* optionally step-wise sampling with previews and cancel: ``slice_steps(mask2d, frame, vendor, seed,
  context=None, cancel=threading.Event())`` yielding ``(step, steps, preview)`` (see
  :mod:`cmrstudio.engine.hq`), and ``describe()`` returning ``steps``/``solver``/``guidance``;
* class attributes: ``kinds`` (the card kinds it serves), ``one_step`` (one network pass a render:
  fast enough for the live path), ``scene`` (renders whole slices, also *in a patient's own slice*;
  False: the heart-centred crop, fully synthetic only).

Every render goes through the same checks for every generator, built in or not: an exception other
than :class:`CmrError` becomes one sentence naming the model and the plugin that serves it, and a
result of the wrong shape or with NaN/Inf values is refused the same way.

**How it is found.** Two entry-point groups in the plugin's ``pyproject.toml``::

    [project.entry-points."cmrstudio.renderers"]   # code: which class renders which card kind
    vae = "cmrstudio_vae:renderers"                 # -> a RendererSpec or a list of them
    [project.entry-points."cmrstudio.generators"]  # models: cards the registry lists
    vae = "cmrstudio_vae:models"                    # -> card paths, folders of cards, ModelInfo objects

cmrstudio's own SPADE, diffusion and flow renderers are registered through the first group by
cmrstudio's own distribution (``builtin = "cmrstudio.engine.builtin:renderers"``), by the same code
path as any plugin; a plugin may not take over a kind that is already served.

**How weights are checked.** A card holds the sha256 of its weights file; :func:`verify` checks it
before every load, and models from plugins are also checked when they are listed: a plugin model
whose weights are missing or do not match its card is named in one sentence and skipped, as is a
plugin that fails to import. Cards are JSON: ``format_version``, ``name``, ``kind``,
``architecture``, ``frame`` (``size``, ``spacing_mm``), ``vendors_trained``, ``training`` (data,
counts, licences, ``held_out_case_prefixes``, iterations, hardware, time), ``terms``, ``metrics``
(written by ``cmrstudio evaluate``), ``weights`` and ``sha256``; :func:`save_model` writes the weights
and then the card with the checksum.

This module imports no torch until :class:`GeneratorFront` is used, so entry points that import it
stay light.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cmrstudio.anatomy import LABELS, VENDORS
from cmrstudio.errors import CmrError
from cmrstudio.models.checkpoint import ModelInfo, load_state, read_card, save_model, sha256_file, verify

if TYPE_CHECKING:
    from cmrstudio.engine.base import GeneratorFront

API_VERSION = "1.1"  # 1.1 adds one_pass_renderer
API_MAJOR = int(API_VERSION.split(".")[0])
RENDERERS_GROUP = "cmrstudio.renderers"
MODELS_GROUP = "cmrstudio.generators"

__all__ = ["API_VERSION", "API_MAJOR", "RENDERERS_GROUP", "MODELS_GROUP", "RendererSpec", "renderer", "one_pass_renderer", "GeneratorFront",
           "ModelInfo", "model_info", "read_card", "save_model", "verify", "sha256_file", "load_state", "CmrError",
           "LABELS", "VENDORS"]


@dataclass(frozen=True)
class RendererSpec:
    """One kind of model and the factory that opens it: ``factory(info, device=None, threads=None, **options)``
    returns a :class:`GeneratorFront`. ``live``: offered for the live path (one network pass); ``steps``:
    offered for HQ renders (step-wise sampling with previews and cancel). ``options`` a user may pass
    (``steps``, ``guidance``, ``solver``, ``bf16``) reach the factory; refuse those that do not apply."""

    kind: str
    factory: Callable[..., Any]
    live: bool = False
    steps: bool = False
    api: int = API_MAJOR
    description: str = ""


def renderer(kind: str, factory: Callable[..., Any], *, live: bool = False, steps: bool = False, api: int = API_MAJOR,
             description: str = "") -> RendererSpec:
    """What an entry point of ``cmrstudio.renderers`` returns (one, or a list)."""
    return RendererSpec(kind, factory, live, steps, api, description)


def one_pass_renderer(kind: str, renderer_class: Callable[[], type], what: str, description: str = "") -> RendererSpec:
    """The spec of a one-pass generator offered for the live path: its factory refuses the step-wise options
    (``steps``, ``guidance``, ``solver``) in one sentence, then builds ``renderer_class()(info, device=, threads=)``.
    ``renderer_class`` is called only when a model is opened, so the entry point need not import torch; ``what``
    finishes the sentence "'<model>' is ...", e.g. "a VAE (one pass, no steps or guidance)"."""

    def factory(info, device=None, threads=None, bf16=None, **options):
        given = [k for k, v in options.items() if v is not None]
        if given:
            raise CmrError(f"--{'/--'.join(given)} applies to step-wise models; '{info.name}' is {what}.")
        return renderer_class()(info, device=device, threads=threads)

    return renderer(kind, factory, live=True, description=description)


def model_info(card: dict, card_path: str | Path, weights_path: str | Path, origin: str = "plugin") -> ModelInfo:
    """A model in a format of its own (e.g. a TorchScript folder), described by a card dict that has at least
    ``name``, ``kind`` and ``sha256`` (of the weights file), for entry points of ``cmrstudio.generators``."""
    for key in ("name", "kind", "sha256"):
        if not card.get(key):
            raise CmrError(f"The model card {card_path} lacks '{key}'.")
    full = {"format_version": 1, "architecture": {"name": card["kind"]}, **card}
    return ModelInfo(str(card["name"]), str(card["kind"]), Path(card_path), Path(weights_path), origin, full)


def __getattr__(name: str):
    if name == "GeneratorFront":  # torch is imported only when a renderer is built
        from cmrstudio.engine.base import GeneratorFront

        return GeneratorFront
    raise AttributeError(f"module 'cmrstudio.api' has no attribute {name!r}")
