"""Remembered studio settings: one plain JSON file (not QSettings), so the CLI, the GUI and
the tests all read the same thing.

Where: ``$CMRSTUDIO_CONFIG`` (a file path) if set, else ``$XDG_CONFIG_HOME`` (or
``~/.config``)/cmrstudio/settings.json. Reading never fails: a missing file gives the
defaults; a damaged one gives the defaults and a sentence naming the file; a single value
of the wrong type (or not one of the allowed choices) falls back to that key's default, and
unknown keys are ignored. Writing is atomic (temporary file + rename).
"""

from __future__ import annotations

import json
import numbers
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from cmrstudio.anatomy import VENDORS
from cmrstudio.errors import CmrError
from cmrstudio.io.common import write_text_atomic

DEVICES = ("auto", "cpu", "cuda", "mps")
THEMES = ("dark", "light", "system")
MAX_RECENT = 10
SETTINGS_FILE = "settings.json"

DEFAULT_MARGIN_MM = 10.0  # in this patient: how far around what the painter changed renders repaint
UNCHANGED_MARGIN_MM = 5.0  # ... and around an outline left as the scan's own labels had it (at most the margin)


def band_mm(margin_mm: float, own_known: bool = True) -> float:
    """How far an in-patient render repaints around an outline left as the scan's own labels had it: UNCHANGED_MARGIN_MM,
    or the margin when smaller; the whole margin when the scan has no labels to compare with."""
    return min(float(margin_mm), UNCHANGED_MARGIN_MM) if own_known else float(margin_mm)

MARGIN_RANGE_MM = (0.5, 100.0)  # the repaint margins a render, the settings and the studio's box accept

@dataclass
class Settings:
    device: str = "auto"  # auto | cpu | cuda | mps
    live_model: str | None = None  # None: the default SPADE model
    hq_model: str | None = None  # None: the default HQ model (flow-cmr-fine-2step); "flow" etc. allowed
    layout_prior: str | None = None  # fully synthetic renders' body layout: a layout model (a bank of the site's scans); None: the card's
    vendor: str = "unknown"
    margin_mm: float = DEFAULT_MARGIN_MM  # in this patient: how far around the old and new heart live and HQ renders repaint
    last_folder: str | None = None
    last_project: str | None = None
    recent: list[str] = field(default_factory=list)  # recently opened paths, newest first, at most MAX_RECENT
    theme: str = "dark"  # the studio's look: dark (a reading room), light, or system (napari's themes)
    backend: str = "local"  # where live and HQ frames render: "local" (this machine) or a cmrstudio serve URL (http[s]://host:port)
    backend_token_file: str | None = None  # the server's token, in a file of its own (mode 600), never in this file

    def add_recent(self, path: str | os.PathLike) -> None:
        """Put ``path`` (made absolute) first in ``recent``, without duplicates, keeping at most MAX_RECENT."""
        p = os.path.abspath(os.path.expanduser(os.fspath(path)))
        self.recent = [p] + [r for r in self.recent if r != p]
        del self.recent[MAX_RECENT:]

    def to_dict(self) -> dict:
        return asdict(self)


def settings_path() -> Path:
    env = os.environ.get("CMRSTUDIO_CONFIG")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "cmrstudio" / SETTINGS_FILE


def valid_margin(mm) -> bool:
    """Whether ``mm`` is a usable repaint margin: a number of mm from MARGIN_RANGE_MM[0] to MARGIN_RANGE_MM[1]."""
    return isinstance(mm, numbers.Real) and not isinstance(mm, bool) and MARGIN_RANGE_MM[0] <= float(mm) <= MARGIN_RANGE_MM[1]


def check_margin(mm) -> float:
    """``mm`` as a float, or one sentence (CmrError) saying what a repaint margin must be."""
    if not valid_margin(mm):
        lo, hi = MARGIN_RANGE_MM
        raise CmrError(f"The repaint margin {mm!r} is not usable; give a number of mm from {lo:g} to {hi:g} "
                       f"({DEFAULT_MARGIN_MM:g} is usual).")
    return float(mm)


def _valid(name: str, value) -> bool:
    if name == "device":
        return isinstance(value, str) and value in DEVICES
    if name == "vendor":
        return isinstance(value, str) and value in VENDORS
    if name in ("live_model", "hq_model", "layout_prior", "last_folder", "last_project"):
        return value is None or (isinstance(value, str) and value != "")
    if name == "margin_mm":
        return valid_margin(value)
    if name == "theme":
        return isinstance(value, str) and value in THEMES
    if name == "backend":
        return isinstance(value, str) and (value == "local" or value.startswith(("http://", "https://")))
    if name == "backend_token_file":
        return value is None or (isinstance(value, str) and value != "")
    if name == "recent":
        return isinstance(value, list) and all(isinstance(v, str) and v for v in value)
    return False


def load_settings(path: str | os.PathLike | None = None) -> tuple[Settings, str | None]:
    """(settings, warning sentence or None). Never raises for a bad file: defaults stand in."""
    p = Path(path).expanduser() if path is not None else settings_path()
    if not p.exists():
        return Settings(), None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return Settings(), f"The settings file {p} cannot be read ({exc}); the default settings are used."
    except ValueError as exc:
        return Settings(), (f"The settings file {p} is damaged (not JSON: {exc}); "
                            "the default settings are used and it will be rewritten when settings are saved.")
    if not isinstance(data, dict):
        return Settings(), (f"The settings file {p} does not hold a settings object; "
                            "the default settings are used and it will be rewritten when settings are saved.")
    s = Settings()
    bad = []
    for f in fields(Settings):
        if f.name not in data:
            continue
        v = data[f.name]
        if _valid(f.name, v):
            setattr(s, f.name, list(dict.fromkeys(v))[:MAX_RECENT] if f.name == "recent" else v)
        else:
            bad.append(f.name)
    if bad:
        return s, f"The settings file {p} has unusable values for {', '.join(bad)}; their defaults are used instead."
    return s, None


def save_settings(s: Settings, path: str | os.PathLike | None = None) -> Path:
    """Write the settings atomically (the folder is created); returns the file's path."""
    p = Path(path).expanduser() if path is not None else settings_path()
    data = asdict(s)
    data["recent"] = list(dict.fromkeys(data["recent"]))[:MAX_RECENT]
    try:
        return write_text_atomic(p, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise CmrError(f"Cannot save the settings to {p} ({exc.strerror or exc}); the previous settings file is unchanged.") from None
