"""Remembered studio settings: plain JSON that never crashes the studio."""

from __future__ import annotations

import json
import os

import pytest

from cmrstudio.errors import CmrError
from cmrstudio.settings import MAX_RECENT, Settings, load_settings, save_settings, settings_path


def test_round_trip_creates_the_folder(tmp_path):
    path = tmp_path / "deep" / "cfg" / "settings.json"
    s = Settings(device="cpu", live_model="spade-cmr", hq_model="flow", vendor="philips", last_folder=str(tmp_path),
                 last_project=str(tmp_path / "proj"))
    s.add_recent(tmp_path / "a.nii.gz")
    assert save_settings(s, path) == path and path.is_file()
    back, warning = load_settings(path)
    assert warning is None and back == s
    assert json.loads(path.read_text(encoding="utf-8"))["device"] == "cpu"
    assert [p.name for p in path.parent.iterdir()] == ["settings.json"]  # no temporary file left


def test_missing_file_gives_defaults_quietly(tmp_path):
    assert load_settings(tmp_path / "none.json") == (Settings(), None)


def test_damaged_file_gives_defaults_and_a_sentence_naming_it(tmp_path):
    path = tmp_path / "settings.json"
    for text in ("{not json", "[1, 2]", "\xff\xfe garbage"):
        path.write_text(text, encoding="latin-1")
        s, warning = load_settings(path)
        assert s == Settings() and str(path) in warning and "default" in warning


def test_wrong_typed_values_fall_back_to_that_keys_default(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"device": 3, "vendor": "martian", "hq_model": "flow", "live_model": ["x"],
                                "recent": ["/a", 5], "last_folder": "/data", "colour_scheme": "dark", "margin_mm": 0}))
    s, warning = load_settings(path)
    assert (s.device, s.vendor, s.live_model, s.recent, s.margin_mm) == ("auto", "unknown", None, [], 10.0)
    assert "margin_mm" in warning
    assert (s.hq_model, s.last_folder) == ("flow", "/data")  # good values kept, unknown keys ignored
    assert str(path) in warning and all(k in warning for k in ("device", "vendor", "live_model", "recent"))
    assert "colour_scheme" not in warning and "hq_model" not in warning
    path.write_text(json.dumps({"device": "cuda", "unknown_key": 1, "margin_mm": 6.5}))
    assert load_settings(path) == (Settings(device="cuda", margin_mm=6.5), None)
    for bad in (-1, 0.2, 150, "5", True, None):
        path.write_text(json.dumps({"margin_mm": bad}))
        s, warning = load_settings(path)
        assert s.margin_mm == 10.0 and "margin_mm" in warning, bad


def test_recent_is_newest_first_without_duplicates_and_capped(tmp_path):
    s = Settings()
    for i in range(15):
        s.add_recent(tmp_path / f"case{i}")
    s.add_recent(tmp_path / "case12")
    assert len(s.recent) == MAX_RECENT == 10
    assert s.recent[0] == str(tmp_path / "case12") and s.recent[1] == str(tmp_path / "case14")
    assert len(set(s.recent)) == 10 and str(tmp_path / "case4") not in s.recent
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"recent": [f"/p{i}" for i in range(25)]}))
    assert load_settings(path)[0].recent == [f"/p{i}" for i in range(10)]


def test_settings_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CMRSTUDIO_CONFIG", str(tmp_path / "my.json"))
    assert settings_path() == tmp_path / "my.json"
    save_settings(Settings(vendor="ge"))
    assert load_settings()[0].vendor == "ge"
    monkeypatch.delenv("CMRSTUDIO_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert settings_path() == tmp_path / "xdg" / "cmrstudio" / "settings.json"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert settings_path() == tmp_path / "home" / ".config" / "cmrstudio" / "settings.json"


def test_a_failed_save_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "settings.json"
    save_settings(Settings(device="cpu"), path)
    before = path.read_bytes()

    def failing_replace(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(CmrError, match="settings.json.*No space left"):
        save_settings(Settings(device="cuda"), path)
    monkeypatch.undo()
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["settings.json"]
