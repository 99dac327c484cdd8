"""``cmrstudio doctor``: a healthy installation passes; a damaged model, a damaged settings file, a missing or
damaged project and too little disk each give one sentence (and exit code 1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from test_fuzz import run_cli


def _models(folder, names_kinds):
    from cmrstudio.models.checkpoint import save_model

    for name, kind in names_kinds:
        save_model(folder, name, {"w": np.arange(4, dtype=np.float32)}, {"kind": kind, "architecture": {}})


@pytest.fixture
def install(tmp_path, monkeypatch):
    """An installation of its own: shipped models (the defaults, tiny), a user model folder, settings, data home."""
    from cmrstudio.models.registry import DEFAULT_MODELS

    res = tmp_path / "resources"
    _models(res / "models", [(name, kind) for kind, name in DEFAULT_MODELS.items()])
    user = tmp_path / "user-models"
    user.mkdir()
    monkeypatch.setenv("CMRSTUDIO_RESOURCES", str(res))
    monkeypatch.setenv("CMRSTUDIO_MODELS", str(user))
    monkeypatch.setenv("CMRSTUDIO_CONFIG", str(tmp_path / "config" / "settings.json"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("CMRSTUDIO_PROJECT", raising=False)
    return tmp_path


def _problems(findings, topic=None):
    return [f.message for f in findings if f.level == "problem" and (topic is None or f.topic == topic)]


def test_a_healthy_installation_has_nothing_wrong(install):
    from cmrstudio.doctor import run_checks
    from cmrstudio.project import Project
    from cmrstudio.settings import Settings, save_settings

    proj = Project.create(install / "projects" / "mine")
    save_settings(Settings(last_project=str(proj.folder)))
    findings = run_checks(display="")
    assert _problems(findings) == []
    topics = {f.topic for f in findings}
    assert {"python", "packages", "torch", "gui", "opengl", "models", "settings", "project", "disk"} <= topics
    assert all("\n" not in f.message and f.message.endswith(".") for f in findings)
    assert any(f.topic == "opengl" and f.level == "note" and "not tried" in f.message for f in findings)
    shipped = Path(__file__).resolve().parents[1] / "resources" / "models"
    named = [f.message for f in findings if f.topic == "models"]
    for name in ("spade-cmr", "flow-cmr-fine-2step", "layout-cmr", "seg-cmr"):  # the default models are checked (none a problem, above)
        assert (shipped / f"{name}.json").exists() and any(f"'{name}'" in m for m in named), (name, named)
    assert (shipped / "flow-cmr.json").exists()  # the HQ model's teacher ships too
    assert sum(f.topic == "models" and f.level == "ok" for f in findings) >= 4
    assert any(f.topic == "project" and f.level == "ok" and str(proj.folder) in f.message for f in findings)


def test_damaged_model_settings_and_missing_project_each_get_one_sentence(install):
    from cmrstudio.doctor import run_checks
    from cmrstudio.settings import Settings, save_settings

    user = install / "user-models"
    _models(user, [("mine", "spade")])
    w = user / "mine.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the weights
    w.write_bytes(bytes(data))
    (user / "broken.json").write_text("{ not json")
    (install / "config").mkdir()
    (install / "config" / "settings.json").write_text("{ damaged")
    findings = run_checks(display="")
    models = _problems(findings, "models")
    assert any("mine.safetensors" in m and "does not match the sha256" in m for m in models), models
    assert any("broken.json" in m and "not valid JSON" in m for m in models), models
    settings = _problems(findings, "settings")
    assert len(settings) == 1 and "settings.json" in settings[0] and "damaged" in settings[0]

    save_settings(Settings(last_project=str(install / "gone")))
    project = _problems(run_checks(display=""), "project")
    assert len(project) == 1 and str(install / "gone") in project[0] and "cannot be opened" in project[0]

    # through the command: exit code 1, one line per problem
    rc, out, err = run_cli(["doctor"])
    assert rc == 1 and "Traceback" not in err
    lines = out.splitlines()
    assert sum(ln.startswith("problem") for ln in lines) == 3 and lines[-1] == "3 problems found."
    doc = json.loads(run_cli(["doctor", "--json"])[1])
    assert doc["ok"] is False and {f["topic"] for f in doc["findings"] if f["level"] == "problem"} == {"models", "project"}


def test_a_damaged_project_and_a_missing_default_model_are_named(install):
    from cmrstudio.doctor import check_models, check_project
    from cmrstudio.project import Project
    from cmrstudio.settings import Settings
    from tests.test_export import _render

    proj = Project.create(install / "p")
    res, aff, c = _render(3)
    item = proj.add(res, {"case_id": c.case_id}, affine=aff)
    proj.render_files(item.id)["image"].unlink()
    found = check_project(Settings(last_project=str(proj.folder)))
    assert any(f.level == "problem" and item.id in f.message and "missing" in f.message for f in found), found
    (proj.folder / "project.json").write_text("[]")
    found = check_project(Settings(last_project=str(proj.folder)))
    assert [f.level for f in found] == ["problem"] and "project.json" in found[0].message

    (install / "resources" / "models" / "flow-cmr-fine-2step.json").unlink()
    found = check_models()
    assert any(f.level == "problem" and "default flow model 'flow-cmr-fine-2step' is not installed" in f.message for f in found)


def test_a_model_whose_named_prior_is_missing_is_named(install):
    """A scene model names its tissue-class prior in its card, a fine prior its coarse one: doctor says which is missing."""
    from cmrstudio.doctor import check_models
    from cmrstudio.models.checkpoint import save_model

    user = install / "user-models"
    w = {"w": np.arange(4, dtype=np.float32)}
    save_model(user, "fine-image", w, {"kind": "spade", "architecture": {},
                                       "conditioning": {"layout_prior": {"name": "fine-prior", "cell_px": 2}, "layout_factor": 2}})
    save_model(user, "fine-prior", w, {"kind": "layout", "architecture": {},
                                       "conditioning": {"scheme": "layout-fine-v1", "coarse_prior": {"name": "coarse-gone"}}})
    problems = _problems(check_models(), "models")
    assert len(problems) == 1 and "'fine-prior' needs the layout model 'coarse-gone'" in problems[0], problems
    (user / "fine-prior.json").unlink()
    problems = _problems(check_models(), "models")
    assert len(problems) == 1 and "'fine-image' needs the layout model 'fine-prior'" in problems[0] and str(user) in problems[0], problems


def test_too_little_free_disk_is_a_problem(tmp_path):
    from cmrstudio.doctor import check_disk

    assert [f.level for f in check_disk(tmp_path / "not" / "yet", minimum=0)] == ["ok"]
    low = check_disk(tmp_path, minimum=1 << 62)
    assert low[0].level == "problem" and "GiB are free" in low[0].message and str(tmp_path) in low[0].message


def test_opengl_is_tried_when_there_is_a_display():
    from cmrstudio.doctor import check_gui

    display = os.environ.get("DISPLAY")
    if not display:
        pytest.skip("no display (pytest-xvfb provides one under `make test`)")
    gl = [f for f in check_gui(display=display) if f.topic == "opengl"]
    assert len(gl) == 1 and gl[0].level == "ok" and "OpenGL" in gl[0].message, gl


def test_the_same_weights_saved_twice_have_one_checksum(tmp_path):
    """safetensors writes its metadata map in a hash map's order, which changes from save to save; the model files we
    write sort it, so a checksum names a content (the same tensors and card: the same sha256), and the files still read
    with safetensors' own reader, metadata and all."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save

    from cmrstudio.models.checkpoint import canonical_header, load_state, save_model

    state = {"b.w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a.w": torch.ones(4, dtype=torch.float64)}
    meta = {f"key{i}": f"value {i}" for i in range(6)}
    raw = {save(state, metadata=meta) for _ in range(12)}
    assert len(raw) > 1  # what safetensors alone does (12 saves of 6 keys all in one order: about 1 in 10^30)
    assert len({canonical_header(b) for b in raw}) == 1
    cards = [save_model(tmp_path / f"m{i}", "m", state, {"kind": "spade", "architecture": {}}).card for i in range(8)]
    assert len({c["sha256"] for c in cards}) == 1
    back = load_state(tmp_path / "m0" / "m.safetensors")
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    with safe_open(str(tmp_path / "m0" / "m.safetensors"), "pt") as f:
        assert f.metadata() == {"cmrstudio_model": "m", "kind": "spade"}
    blob = (tmp_path / "m0" / "m.safetensors").read_bytes()  # in the file itself, the metadata in key order
    header = json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])
    assert list(header["__metadata__"]) == ["cmrstudio_model", "kind"]
