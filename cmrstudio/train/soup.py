"""A model soup: the uniform average of the weights of several checkpoints fine-tuned from one model.

Checkpoints trained on from the same starting weights lie in one basin of the loss, so the mean of their
weights is itself a good model, often better than any one of them (Wortsman et al., "Model soups", ICML
2022; Izmailov et al., "Averaging weights leads to wider optima", UAI 2018). For a GAN the mean can also
keep what its members draw, such as period-2 stripes, so a soup is screened like any checkpoint before it ships
(the models page has the figures of spade-cmr's soups).

A soup is only made of members that can be averaged and described by one card: the same kind, architecture,
frame, conditioning and vendors, the same held-out patients and training data, and the same starting model
(``training.pretraining``'s checksum). Differentially private members are refused: averaging several private
releases spends their budgets together, which one card's epsilon would understate.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cmrstudio.errors import CmrError

MUST_MATCH = ("kind", "frame", "conditioning", "vendors_trained", "label_scheme")
NETWORK = ("class", "preset", "options")  # what the weights mean; the losses and critic they were trained with may differ
TRAINING_MUST_MATCH = ("held_out_case_prefixes", "data")


def _start(card: dict) -> str | None:
    return (card.get("training", {}).get("pretraining") or {}).get("sha256")


def _from(card: dict) -> str:
    sha = _start(card)
    return f"on from {sha[:12]}…" if sha else "from scratch"


def _check_members(infos: list) -> None:
    first = infos[0]
    if _start(first.card) is None:
        raise CmrError(f"{first.card_path} records no starting model (training.pretraining); a soup averages checkpoints trained "
                       "on from one model (train ... --init), so pick checkpoints of such runs.")
    for info in infos:
        if info.card.get("training", {}).get("differential_privacy"):
            raise CmrError(f"{info.card_path} is differentially private; averaging private models spends their privacy budgets "
                           "together, which one card's epsilon would understate, so soup non-private models only.")
    for info in infos[1:]:
        net, net0 = ({k: i.card["architecture"].get(k) for k in NETWORK} for i in (info, first))
        if net != net0:
            o, o0 = net["options"] or {}, net0["options"] or {}
            what = [k for k in NETWORK[:2] if net[k] != net0[k]] + [k for k in sorted(set(o) | set(o0)) if o.get(k) != o0.get(k)]
            raise CmrError(f"{info.card_path} and {first.card_path} are different networks (they differ in {', '.join(what[:6])}); "
                           "a soup averages the weights of one network, so pick checkpoints of runs with the same architecture.")
        for key in MUST_MATCH:
            if info.card.get(key) != first.card.get(key):
                raise CmrError(f"{info.card_path} and {first.card_path} differ in '{key}'; a soup averages models of one "
                               "frame and conditioning, so pick checkpoints of runs with the same options.")
        for key in TRAINING_MUST_MATCH:
            if info.card.get("training", {}).get(key) != first.card.get("training", {}).get(key):
                raise CmrError(f"{info.card_path} and {first.card_path} differ in training.{key}; a soup's card names one training "
                               "set and one set of held-out patients, so pick checkpoints trained on the same data.")
        if _start(info.card) != _start(first.card):
            raise CmrError(f"{info.card_path} was trained {_from(info.card)} but {first.card_path} {_from(first.card)}; a soup "
                           "averages checkpoints of one starting model (one basin of the loss), so pick checkpoints of runs "
                           "that started from the same model.")


def average_states(states: list[dict[str, torch.Tensor]], names: list[str]) -> dict[str, torch.Tensor]:
    """The mean of float tensors (in float64, then back to each tensor's dtype); other tensors must be equal."""
    keys = states[0].keys()
    for s, name in zip(states[1:], names[1:]):
        if s.keys() != keys:
            missing = sorted(set(keys) ^ set(s.keys()))[:3]
            raise CmrError(f"The weights of {name} and {names[0]} hold different tensors ({', '.join(missing)}, ...); "
                           "re-copy the checkpoint or pick another.")
    out = {}
    for k in keys:
        ts = [s[k] for s in states]
        if any(t.shape != ts[0].shape for t in ts):
            raise CmrError(f"The tensor {k} has different shapes in {names[0]} and the others; pick checkpoints of one architecture.")
        if ts[0].is_floating_point():
            out[k] = (torch.stack([t.double() for t in ts]).sum(0) / len(ts)).to(ts[0].dtype)
        elif all(torch.equal(t, ts[0]) for t in ts):
            out[k] = ts[0].clone()
        else:
            raise CmrError(f"The tensor {k} (not a weight) differs between {names[0]} and the others, so it cannot be averaged.")
    return out


def make_soup(members: list[str | Path], out: str | Path, name: str):
    """Average ``members`` (cards, weights files or installed names; at least two) into ``out``/``name``; returns its ModelInfo.

    The soup's card is its last member's, with ``training.soup`` naming every member (card, checksum, steps), the
    iterations and seconds of its furthest-trained member, and the measured figures left out: a soup is measured anew
    (``cmrstudio evaluate all``).
    """
    from cmrstudio.models.checkpoint import load_state, save_model, verify
    from cmrstudio.models.registry import get_model

    if len(members) < 2:
        raise CmrError(f"A soup needs two members or more; {len(members)} given. Name the checkpoints' cards, for example "
                       "RUN/checkpoints/NAME-step001000.json RUN/checkpoints/NAME-step001250.json.")
    infos = [get_model(m, kind=None) for m in members]
    if len({i.card["sha256"] for i in infos}) < len(infos):
        raise CmrError("The same weights are named twice among the soup's members; name each checkpoint once.")
    _check_members(infos)
    for info in infos:
        verify(info)
    names = [str(i.card_path) for i in infos]
    state = average_states([load_state(i.weights_path) for i in infos], names)
    card = {k: v for k, v in infos[-1].card.items() if k not in ("metrics", "headline", "name", "sha256", "weights", "weights_bytes")}
    training = dict(card.get("training", {}))
    arch = card["architecture"] = dict(card["architecture"])
    differ = [k for k in ("losses", "critic") if len({json.dumps(i.card["architecture"].get(k), sort_keys=True) for i in infos}) > 1]
    for k in differ:  # the members were trained with different losses or critics: each member's is in the soup's record
        arch.pop(k, None)
    training["soup"] = {
        "method": "uniform average of the members' weights (model soup; Wortsman et al., ICML 2022)",
        "members": [{"card": str(i.card_path), "sha256": i.card["sha256"], "iterations": i.card.get("training", {}).get("iterations"),
                     **{k: i.card["architecture"].get(k) for k in differ}} for i in infos],
    }
    training.pop("last_losses", None)  # one member's losses, not the soup's
    for key in ("iterations", "seconds"):  # the furthest-trained member's (each member's is in the soup's record), in any order
        vals = [i.card.get("training", {}).get(key) for i in infos]
        if all(isinstance(v, (int, float)) for v in vals):
            training[key] = max(vals)
    card["training"] = training
    return save_model(out, name, state, card)
