"""Model cards as the record of what was measured: a figure goes into the card with the command that reproduces it."""

from __future__ import annotations

import json
from dataclasses import replace

from cmrstudio.errors import CmrError


def record_metric(model, key: str, value: dict, command: str | None = None, kind=None):
    """Write a measured figure into a model's card under ``metrics[key]`` and refresh the card's headline numbers.

    ``model``: a :class:`~cmrstudio.models.checkpoint.ModelInfo`, or a name or card path looked up among ``kind``
    (default: every generator kind, plugins included). ``command``: the command line that reproduces the figure,
    stored beside it as ``command`` (nothing is stored when None). Returns the updated ModelInfo.
    """
    from cmrstudio.engine.factory import generator_kinds
    from cmrstudio.evaluate.report import headline
    from cmrstudio.models.checkpoint import update_card
    from cmrstudio.models.registry import get_model

    info = model if hasattr(model, "card") else get_model(model, kind=kind or generator_kinds())
    info = _as_on_disk(info)
    entry = {**value, "command": command} if command is not None else dict(value)
    metrics = {**info.card.get("metrics", {}), key: entry}
    return update_card(info, metrics=metrics, headline=headline({**info.card, "metrics": metrics}))


def _as_on_disk(info):
    """``info`` with its card as the file holds it now: evaluations of one model run side by side (two processes, or
    one that began before another finished) each read the card when they began, and the figures another has recorded
    since must not be lost when this one writes. A card that now names other weights (a model retrained in place while
    it was measured) is refused: the figures are of the weights the evaluation began with."""
    try:
        now = json.loads(info.card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return info
    if not isinstance(now, dict):
        return info
    if now.get("sha256") != info.card.get("sha256"):
        raise CmrError(f"The weights of '{info.name}' changed while it was being measured ({info.card_path} now names others); "
                       "its figures were not recorded: measure it again.")
    return replace(info, card={**info.card, "metrics": now.get("metrics", {})})

