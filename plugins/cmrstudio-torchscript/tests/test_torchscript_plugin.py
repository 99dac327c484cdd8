"""The cmrstudio-torchscript plugin: model folders (model.pt + card.json) found in $CMRSTUDIO_TORCHSCRIPT, checked,
rendered; bad folders named in one sentence and skipped."""

from __future__ import annotations

import json
from importlib.metadata import distribution
from pathlib import Path

import numpy as np
import pytest
import torch

torchscript_installed = pytest.importorskip("cmrstudio_torchscript", reason="the plugin is not installed: pip install -e plugins/cmrstudio-torchscript (installer/setup.sh test does)")

from cmrstudio.api import CmrError, sha256_file

import cmrstudio_torchscript as ts

LABELS = ["background", "LV blood pool", "LV myocardium", "RV blood pool"]


class Painter(torch.nn.Module):
    """A 'network trained elsewhere': each label gets a fixed grey level, no latent."""

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        levels = torch.tensor([0.1, 0.9, 0.3, 0.7]).view(1, 4, 1, 1)
        return (onehot * levels).sum(1, keepdim=True)


def make_folder(root: Path, folder: str, **card) -> Path:
    d = root / folder
    d.mkdir(parents=True)
    torch.jit.script(Painter()).save(str(d / "model.pt"))
    full = {"format": "cmrstudio-torchscript", "format_version": 1, "name": folder, "frame": {"size": 64, "spacing_mm": 2.5},
            "labels": LABELS, "vendors": ["unknown"], "latent_dim": 0, "output_range": [0, 1],
            "sha256": sha256_file(d / "model.pt"), **card}
    (d / "card.json").write_text(json.dumps(full))
    return d


def test_entry_points():
    eps = {(ep.group, ep.name): ep.value for ep in distribution("cmrstudio-torchscript").entry_points}
    assert eps[("cmrstudio.renderers", "torchscript")] == "cmrstudio_torchscript:renderers"
    assert eps[("cmrstudio.generators", "torchscript")] == "cmrstudio_torchscript:models"
    (spec,) = ts.renderers()
    assert spec.kind == "torchscript" and spec.live


def test_shipped_example_reads_and_matches_its_checksum():
    (ex,) = [d for d in (Path(ts.__file__).parent / "examples").iterdir() if (d / "card.json").is_file()]
    info = ts.read_folder(ex)
    assert info.name == "vae-cmr-ts" and info.kind == "torchscript"
    assert sha256_file(info.weights_path) == info.card["sha256"] and info.card["exported_from"]["model"] == "vae-cmr"
    assert info.card["frame"] == {"size": 128, "spacing_mm": 1.25, "crop": "heart-centred"}


def test_a_folder_from_elsewhere_is_listed_and_renders(tmp_path, monkeypatch):
    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.models.registry import list_models

    make_folder(tmp_path, "painter")
    monkeypatch.setenv(ts.ENV, str(tmp_path))
    models = {m.name: m for m in list_models()}
    assert models["painter"].origin == "plugin" and models["painter"].kind == "torchscript"
    assert "vae-cmr-ts" in models  # the shipped example is always there
    r = open_renderer("painter")
    m = np.zeros((64, 64), np.uint8)
    m[10:20, 10:20], m[30:40, 30:40] = 1, 2
    img = r.render_framed(m, "unknown", seed=0)
    assert img.shape == (64, 64) and np.isclose(img[15, 15], 0.9) and np.isclose(img[35, 35], 0.3) and np.isclose(img[0, 0], 0.1)
    assert r.spacing_mm == 2.5 and r.size == 64 and r.n_labels == 4


@pytest.mark.parametrize("change, words", [
    ({"format": "monai-bundle"}, "is not a 'cmrstudio-torchscript' card"),
    ({"labels": ["background", "RV blood pool"]}, "must be cmrstudio's canonical labels in order"),
    ({"frame": {"size": 5}}, "needs frame.size"),
    ({"sha256": "abc"}, "has no valid sha256"),
    ({"vendors": ["toshiba"]}, "lists vendors"),
    ({"name": "../evil"}, "needs a 'name'"),
    ({"output_range": [0, 255]}, "output_range"),
])
def test_bad_cards_are_one_sentence_and_the_others_stay(tmp_path, monkeypatch, change, words):
    from cmrstudio.models.registry import list_models

    make_folder(tmp_path, "good")
    make_folder(tmp_path, "bad", **change)
    with pytest.raises(CmrError, match=words.replace("(", r"\(").replace("'", "'")):
        ts.read_folder(tmp_path / "bad")
    monkeypatch.setenv(ts.ENV, str(tmp_path))
    problems: list[str] = []
    names = {m.name for m in list_models(problems=problems)}
    assert "good" in names and "bad" not in names
    assert any(words in p and "cmrstudio-torchscript" in p for p in problems), problems


def test_a_replaced_model_file_is_skipped_by_its_checksum(tmp_path, monkeypatch):
    from cmrstudio.models.registry import list_models

    d = make_folder(tmp_path, "tampered")
    (d / "model.pt").write_bytes((d / "model.pt").read_bytes() + b"\0")
    monkeypatch.setenv(ts.ENV, str(tmp_path))
    problems: list[str] = []
    assert "tampered" not in {m.name for m in list_models(problems=problems)}
    assert any("'tampered'" in p and "do not match the sha256" in p for p in problems), problems


def test_not_torchscript_is_one_sentence(tmp_path):
    from cmrstudio.engine.factory import open_renderer

    d = make_folder(tmp_path, "pickle")
    (d / "model.pt").write_bytes(b"not a zip file")
    card = json.loads((d / "card.json").read_text(encoding="utf-8"))
    card["sha256"] = sha256_file(d / "model.pt")
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(CmrError, match="is not a TorchScript model torch can load"):
        open_renderer(ts.read_folder(d))
