"""Model cards as the record of what was measured: a figure goes into the card with the command that reproduces it."""

from __future__ import annotations


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
    entry = {**value, "command": command} if command is not None else dict(value)
    metrics = {**info.card.get("metrics", {}), key: entry}
    return update_card(info, metrics=metrics, headline=headline({**info.card, "metrics": metrics}))
