"""``cmrstudio doctor``: is this installation able to run the studio? One sentence per finding.

Checks, in order: Python, the packages cmrstudio reads files with, torch, the Qt binding and napari
(in a child process, so that a broken GUI install cannot take the check down), whether an OpenGL
context can be made (only when a display is set), every installed model (its card readable, its
weights matching the card's sha256, the default of each kind present), the settings file, the last
project (it opens, and its gallery items are whole) and the free space where cmrstudio keeps its data.

Each :class:`Finding` has a level: ``ok``, ``note`` (worth knowing, nothing wrong) or ``problem``
(something will not work until it is fixed; the sentence says what to do).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

LEVELS = ("ok", "note", "problem")
PYTHON_MIN = (3, 11)
MIN_FREE_BYTES = 1 << 30  # renders, projects and exports need room; below 1 GiB saving may fail
PACKAGES = ("numpy", "scipy", "skimage", "nibabel", "SimpleITK", "h5py", "pydicom", "typer", "safetensors", "PIL")


@dataclass
class Finding:
    level: str  # ok | note | problem
    topic: str  # python, packages, torch, gui, opengl, models, settings, project, disk
    message: str  # one sentence

    def to_dict(self) -> dict:
        return asdict(self)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def check_python() -> list[Finding]:
    v = sys.version_info
    text = f"Python {v.major}.{v.minor}.{v.micro}"
    if (v.major, v.minor) < PYTHON_MIN:
        return [Finding("problem", "python", f"{text} is too old: cmrstudio needs Python {PYTHON_MIN[0]}.{PYTHON_MIN[1]} or newer; "
                                             "install a newer Python and reinstall cmrstudio.")]
    return [Finding("ok", "python", f"{text} ({sys.executable}).")]


def check_packages() -> list[Finding]:
    import importlib

    missing = []
    for name in PACKAGES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # ImportError, or a broken binary module
            missing.append(f"{name} ({_one_line(exc)[:80]})")
    if missing:
        return [Finding("problem", "packages", f"Packages cmrstudio needs cannot be imported: {'; '.join(missing)}; "
                                               "reinstall cmrstudio (pip install -e .).")]
    return [Finding("ok", "packages", f"The packages that read and write scans import: {', '.join(PACKAGES)}.")]


def check_torch() -> list[Finding]:
    try:
        import torch
    except Exception as exc:
        return [Finding("problem", "torch", f"torch cannot be imported ({_one_line(exc)[:120]}); install it (pip install torch==2.13.0) "
                                            "to render, train and evaluate.")]
    devices = ["CPU"]
    try:
        if torch.cuda.is_available():
            devices.append(f"CUDA ({torch.cuda.get_device_name(0)})")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            devices.append("MPS")
    except Exception:
        pass
    return [Finding("ok", "torch", f"torch {torch.__version__} imports; devices: {', '.join(devices)}.")]




def check_gui(display: str | None = None, timeout: float = 120.0) -> list[Finding]:
    """Qt binding and napari (imported in a child process), and an OpenGL context when a display is set."""
    if display is None:
        display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or ""
    want_gl = bool(display) or sys.platform in ("darwin", "win32")
    env = dict(os.environ)
    if not want_gl:
        env["QT_QPA_PLATFORM"] = "offscreen"  # importing needs no display
    try:
        p = subprocess.run([sys.executable, "-m", "cmrstudio.gui.probe", "gl" if want_gl else "nogl"], capture_output=True, text=True,
                           encoding="utf-8", timeout=timeout, env=env, errors="replace")
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("PROBE ")), None)
        out = json.loads(line[6:]) if line else {}
        if not line:
            tail = _one_line(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit code {p.returncode}")
            return [Finding("problem", "gui", f"Checking the Qt binding and napari crashed the check ({tail[:120]}); "
                                              "reinstall the GUI extras (pip install -e .[gui]).")]
    except subprocess.TimeoutExpired:
        return [Finding("problem", "gui", f"Importing Qt and napari took more than {timeout:g} s and was stopped; "
                                          "check the GUI installation (pip install -e .[gui]).")]
    found = []
    if "qt_error" in out:
        found.append(Finding("problem", "gui", f"No Qt binding can be imported ({out['qt_error'][:120]}); the studio window needs one: "
                                               "install the GUI extras (pip install -e .[gui])."))
    else:
        found.append(Finding("ok", "gui", f"Qt binding: {out['qt']}."))
    if "napari_error" in out:
        found.append(Finding("problem", "gui", f"napari cannot be imported ({out['napari_error'][:120]}); the studio window needs it: "
                                               "install the GUI extras (pip install -e .[gui])."))
    else:
        found.append(Finding("ok", "gui", f"napari {out['napari']} imports."))
    if not want_gl:
        found.append(Finding("note", "opengl", "No display is set ($DISPLAY is empty), so OpenGL was not tried; the studio window "
                                               "needs one (or run it under Xvfb); the command line works without."))
    elif "gl" in out:
        found.append(Finding("ok", "opengl", f"An OpenGL context can be made on {display or 'this display'}: {out['gl']}."))
    elif "gl_error" in out:
        found.append(Finding("problem", "opengl", f"No OpenGL context can be made on display {display or '(default)'} "
                                                  f"({out['gl_error'][:120]}); the studio's canvas needs OpenGL 2.1 or newer: "
                                                  "install the graphics driver, or Mesa for software rendering."))
    return found


def check_models() -> list[Finding]:
    from cmrstudio.errors import CmrError
    from cmrstudio.models.checkpoint import verify
    from cmrstudio.models.registry import DEFAULT_MODELS, list_models, priors_named, shipped_dir, user_dir

    problems: list[str] = []
    try:
        models = list_models(problems=problems)
    except Exception as exc:  # a plugin that breaks the listing itself
        return [Finding("problem", "models", f"The installed models cannot be listed ({_one_line(exc)[:120]}); "
                                             "remove the plugin or model folder that causes it.")]
    found = [Finding("problem", "models", _one_line(p)) for p in problems]
    for m in models:
        try:
            verify(m)
        except CmrError as exc:
            found.append(Finding("problem", "models", _one_line(exc.message)))
            continue
        except OSError as exc:
            found.append(Finding("problem", "models", f"The weights of model '{m.name}' ({m.weights_path}) cannot be read "
                                                      f"({exc.strerror or exc}); re-copy them or retrain."))
            continue
        found.append(Finding("ok", "models", f"Model '{m.name}' ({m.kind}, {m.origin}): weights match the card's sha256."))
    names = {m.name for m in models}
    layouts = {m.name for m in models if m.kind == "layout"}
    for m in models:
        for prior in priors_named(m):
            if prior not in layouts:
                found.append(Finding("problem", "models", f"Model '{m.name}' needs the layout model '{prior}' (named in its card), "
                                                          f"which is not installed (looked in {shipped_dir()} and {user_dir()}); its "
                                                          f"fully synthetic renders will refuse to run: install '{prior}' beside it."))
    for kind, name in DEFAULT_MODELS.items():
        if name not in names:
            found.append(Finding("problem", "models", f"The default {kind} model '{name}' is not installed (looked in {shipped_dir()} "
                                                      f"and {user_dir()}); what needs it will refuse to run: reinstall cmrstudio or train one."))
    return found


def check_settings():
    from cmrstudio.settings import load_settings, settings_path

    settings, warn = load_settings()
    path = settings_path()
    if warn:
        return settings, [Finding("problem", "settings", _one_line(warn))]
    if not path.exists():
        return settings, [Finding("note", "settings", f"There is no settings file yet ({path}); the defaults are used.")]
    return settings, [Finding("ok", "settings", f"The settings file {path} reads.")]


def check_project(settings) -> list[Finding]:
    from cmrstudio.errors import CmrError
    from cmrstudio.project import PROJECT_FILE, Project, default_project_dir

    last = settings.last_project if settings is not None else None
    folder = Path(last).expanduser() if last else default_project_dir()
    if not last and not (folder / PROJECT_FILE).exists():
        return [Finding("note", "project", f"There is no project yet; the studio makes one at {folder} when it starts.")]
    try:
        project = Project.open(folder)
    except CmrError as exc:
        where = "the last project (settings: last_project)" if last else "the default project"
        return [Finding("problem", "project", f"{where.capitalize()} cannot be opened: {_one_line(exc.message).rstrip('.')}; "
                                              "the studio will start without it.")]
    found = [Finding("note", "project", _one_line(s)) for s in project.recovered]
    broken = project.check()
    found += [Finding("problem", "project", _one_line(b)) for b in broken]
    found.append(Finding("ok" if not broken else "note", "project",
                         f"The project {project.folder} opens ({len(project.items)} kept render{'s' if len(project.items) != 1 else ''}"
                         + (f", {len(broken)} of them damaged" if broken else "") + ")."))
    return found


def data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "cmrstudio"


def check_disk(folder: Path | None = None, minimum: int = MIN_FREE_BYTES) -> list[Finding]:
    folder = folder or data_dir()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError as exc:
        return [Finding("problem", "disk", f"The free space at {probe} cannot be read ({exc.strerror or exc}).")]
    gib = free / (1 << 30)
    if free < minimum:
        return [Finding("problem", "disk", f"Only {gib:.2f} GiB are free where cmrstudio keeps its data ({folder}); "
                                           f"free at least {minimum / (1 << 30):g} GiB, or saving renders and exports may fail.")]
    return [Finding("ok", "disk", f"{gib:.1f} GiB free where cmrstudio keeps its data ({folder}).")]


def run_checks(display: str | None = None) -> list[Finding]:
    """Every check, in order; never raises (a check that fails unexpectedly is itself a finding)."""
    findings: list[Finding] = []
    settings = None

    def guard(topic, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:
            return [Finding("problem", topic, f"The {topic} check itself failed ({type(exc).__name__}: {_one_line(exc)[:120]}); "
                                              "report this with the output of `cmrstudio doctor --json`.")]

    findings += guard("python", check_python)
    findings += guard("packages", check_packages)
    findings += guard("torch", check_torch)
    findings += guard("gui", check_gui, display)
    findings += guard("models", check_models)
    try:
        settings, found = check_settings()
        findings += found
    except Exception as exc:
        findings.append(Finding("problem", "settings", f"The settings check itself failed ({type(exc).__name__}: {_one_line(exc)[:120]})."))
    findings += guard("project", check_project, settings)
    findings += guard("disk", check_disk)
    return findings
