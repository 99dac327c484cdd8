"""A studio project: a folder holding a gallery of kept renders.

Layout of a project folder::

    project.json               the gallery: name, created, and one entry per kept render
    renders/<id>_image.nii.gz  the render in the scan's own grid (a cmrstudio case: image,
    renders/<id>_mask.nii.gz   mask and sidecar, so ``renders/`` reads as a dataset folder)
    renders/<id>.json
    thumbnails/<id>.png        ~128 px grey thumbnail with the mask outline in the label colours

``project.json`` is rewritten atomically (temporary file + rename) after every change, and
always *after* the files it lists, so a crash never leaves an item listed whose files are
half written. Removing an item unlists it first, then deletes its files. Ids (``r0001``,
``r0002``, ...) are never reused, not even after an item is removed, and an id is skipped
while any file of that name is on disk, so a render's files are never overwritten.

A writer holds an advisory lock (``flock`` on ``.lock``; the kernel releases it if the process
dies) while it writes files and the listing. What a killed writer can leave behind (a temporary
file, the files of a render whose listing was never written, or of one being removed) is tidied
when the project is next opened, if no writer holds the lock: temporary files and incomplete
sets are deleted, a complete set of files that no entry lists is moved to ``.unlisted/`` (never
deleted: it may be a render whose listing was lost). So ``renders/`` and ``thumbnails/`` hold
exactly the files of the listed items, and no listed item lacks its files.

A :class:`Project` object is meant to be the single writer of its folder (the studio opens
one project at a time); two objects writing the same folder at once would each keep only
their own list.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cmrstudio.anatomy import COLOURS, LV, MYO, RV
from cmrstudio.errors import CmrError
from cmrstudio.io.common import atomic_path, jsonable, write_text_atomic

from cmrstudio.record import MODES, Render

PROJECT_FILE = "project.json"
FORMAT = "cmrstudio-project"
VERSION = 1
RENDERS = "renders"
THUMBNAILS = "thumbnails"
THUMB_SIZE = 128
LOCK_FILE = ".lock"
UNLISTED = ".unlisted"
_ITEM_FILE_RE = re.compile(r"^(r\d{4,})(_image\.nii\.gz|_mask\.nii\.gz|\.json|\.png)$")
_TEMP_RE = re.compile(r"^\.[^/]*\.tmp(\.[A-Za-z0-9.]+)?$")  # what io.common.atomic_path leaves when killed

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock, and no tidying of another writer's files
    fcntl = None

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # filename-safe: no separators, no dots
_AUTO_ID_RE = re.compile(r"^r(\d+)")


class _Keep:
    """Sentinel: ``Project.update`` leaves a field as it is."""

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return "KEEP"


KEEP: Any = _Keep()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_project_dir() -> Path:
    """``$CMRSTUDIO_PROJECT`` if set, else ``$XDG_DATA_HOME`` (or ``~/.local/share``)/cmrstudio/projects/default."""
    env = os.environ.get("CMRSTUDIO_PROJECT")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "cmrstudio" / "projects" / "default"


def check_rating(rating: Any) -> int | None:
    """A rating is a whole number 1–5, or None for unrated."""
    if rating is None:
        return None
    if isinstance(rating, (bool, np.bool_)) or not isinstance(rating, (int, np.integer)) or not 1 <= int(rating) <= 5:
        raise CmrError(f"Rating {rating!r} is not allowed; give a whole number from 1 to 5 (or none to clear it).")
    return int(rating)


@dataclass
class GalleryItem:
    """One kept render, as listed in ``project.json``."""

    id: str  # stable, filename-safe, unique within the project
    created: str  # ISO UTC, when it was kept
    model: str
    kind: str
    vendor: str
    seed: int
    sampler: str | None
    steps: int | None
    guidance: float | None
    seconds: float | None
    source: dict = field(default_factory=dict)  # the caller's: case_id, path, slice, phase, ...
    note: str = ""
    rating: int | None = None  # 1–5 or None
    mode: str = "synthetic"  # or "in-patient": the heart painted into a patient's own slice (derived from a patient scan)

    @property
    def derived_from_patient(self) -> bool:
        return self.mode == "in-patient"

    def to_dict(self) -> dict:
        return jsonable({**asdict(self), "derived_from_patient": self.derived_from_patient})

    @classmethod
    def from_dict(cls, d: dict) -> "GalleryItem":
        """Build from a ``project.json`` entry; ValueError/TypeError name the bad field (unknown keys are ignored)."""
        if not isinstance(d, dict):
            raise TypeError(f"an item is {type(d).__name__}, not an object")
        missing = [k for k in ("id", "created", "model", "kind", "vendor", "seed") if k not in d]
        if missing:
            raise ValueError(f"an item lacks {', '.join(missing)}")
        iid = d["id"]
        if not isinstance(iid, str) or not _ID_RE.match(iid):
            raise ValueError(f"item id {iid!r} is not a plain file-name-safe id")

        def opt(key, typ, conv):
            v = d.get(key)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, typ):
                raise TypeError(f"item {iid}: {key} is {v!r}")
            return conv(v)

        seed = d["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"item {iid}: seed is {seed!r}, not a whole number")
        for key in ("created", "model", "kind", "vendor"):
            if not isinstance(d[key], str):
                raise TypeError(f"item {iid}: {key} is {d[key]!r}, not text")
        source = d.get("source") or {}
        if not isinstance(source, dict):
            raise TypeError(f"item {iid}: source is {type(source).__name__}, not an object")
        note = d.get("note") or ""
        if not isinstance(note, str):
            raise TypeError(f"item {iid}: note is {note!r}, not text")
        try:
            rating = check_rating(d.get("rating"))
        except CmrError:
            raise ValueError(f"item {iid}: rating {d.get('rating')!r} is not 1–5") from None
        mode = d.get("mode") or "synthetic"
        if mode not in MODES:
            raise ValueError(f"item {iid}: mode {mode!r} is not one of {', '.join(MODES)}")
        return cls(
            id=iid, created=d["created"], model=d["model"], kind=d["kind"], vendor=d["vendor"], seed=seed,
            sampler=opt("sampler", str, str), steps=opt("steps", int, int), guidance=opt("guidance", (int, float), float),
            seconds=opt("seconds", (int, float), float), source=dict(source), note=note, rating=rating, mode=mode,
        )


# -- thumbnails ------------------------------------------------------------------------------------

def _grey(image: np.ndarray, intensity: tuple[float, float] | None) -> np.ndarray:
    img = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(img)
    img = np.where(finite, img, 0.0)
    if intensity is not None:
        lo, hi = intensity
    else:
        lo, hi = np.percentile(img[finite], (0.5, 99.5)) if finite.any() else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((img - lo) / (hi - lo), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_thumbnail(image: np.ndarray, mask: np.ndarray, intensity: tuple[float, float] | None = (0.0, 1.0),
                     size: int = THUMB_SIZE) -> np.ndarray:
    """An RGB uint8 thumbnail (longest side ``size``): the image in grey, the mask's outline in the label colours.

    ``intensity`` (low, high) maps to black and white; None uses the image's 0.5/99.5 percentiles.
    """
    from PIL import Image
    from skimage.segmentation import find_boundaries

    img, m = np.asarray(image), np.asarray(mask)
    if img.ndim != 2 or m.shape != img.shape:
        raise CmrError(f"A thumbnail needs a 2D image and a mask of the same shape, got {img.shape} and {m.shape}.")
    h, w = img.shape
    scale = size / max(h, w)
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    grey = np.asarray(Image.fromarray(_grey(img, intensity), mode="L").resize((tw, th), Image.Resampling.LANCZOS))
    lab = np.asarray(Image.fromarray(m.astype(np.uint8), mode="L").resize((tw, th), Image.Resampling.NEAREST))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for label in (RV, MYO, LV):
        edge = find_boundaries(lab == label, mode="inner")
        rgb[edge] = np.round(np.asarray(COLOURS[label][:3]) * 255).astype(np.uint8)
    return rgb


def _thumbnail_of(result: Render) -> np.ndarray:
    """The framed render with the framed mask when there is one, else the native render and mask."""
    if result.framed is not None:
        from cmrstudio.data.frame import frame_mask

        try:
            return render_thumbnail(result.framed, frame_mask(result.mask, result.frame), (0.0, 1.0))
        except CmrError:
            pass  # mask and frame disagree: fall back to the native pair
    return render_thumbnail(result.image, result.mask, result.frame.intensity if result.frame else None)


# -- the project -----------------------------------------------------------------------------------

class Project:
    """A folder with ``project.json`` and the kept renders it lists."""

    def __init__(self, folder: str | os.PathLike, name: str, items: list[GalleryItem] | None = None, created: str | None = None,
                 last_number: int = 0):
        self.folder = Path(folder)
        self.name = name
        self.items: list[GalleryItem] = list(items or [])
        self.created = created or _now()
        self.last_number = int(last_number)  # highest rNNNN ever handed out: removed ids are not reused
        self.recovered: list[str] = []  # what opening tidied after a killed writer (one sentence each)

    def __repr__(self) -> str:
        return f"Project({str(self.folder)!r}, name={self.name!r}, items={len(self.items)})"

    # -- paths
    @property
    def path(self) -> Path:
        return self.folder / PROJECT_FILE

    @property
    def renders_dir(self) -> Path:
        return self.folder / RENDERS

    @property
    def thumbnails_dir(self) -> Path:
        return self.folder / THUMBNAILS

    def _files(self, item_id: str) -> dict[str, Path]:
        r = self.renders_dir
        return {"image": r / f"{item_id}_image.nii.gz", "mask": r / f"{item_id}_mask.nii.gz", "json": r / f"{item_id}.json",
                "thumbnail": self.thumbnails_dir / f"{item_id}.png"}

    # -- opening
    @staticmethod
    def _folder_of(folder: str | os.PathLike) -> Path:
        p = Path(folder).expanduser()
        return p.parent if p.name == PROJECT_FILE and p.is_file() else p

    @classmethod
    def create(cls, folder: str | os.PathLike, name: str | None = None) -> "Project":
        """Start a project in a new or empty folder."""
        folder = cls._folder_of(folder)
        if (folder / PROJECT_FILE).exists():
            raise CmrError(f"{folder} already holds a cmrstudio project ({PROJECT_FILE}); open it instead of creating a new one.")
        if folder.exists():
            if not folder.is_dir():
                raise CmrError(f"{folder} is a file, not a folder; choose a new or empty folder for the project.")
            if any(folder.iterdir()):
                raise CmrError(f"{folder} is not empty and holds no cmrstudio project ({PROJECT_FILE}); "
                               "choose a new or empty folder, or the folder of an existing project.")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CmrError(f"Cannot create the project folder {folder} ({exc.strerror or exc}); choose a folder you can write to.") from None
        p = cls(folder, name or folder.resolve().name or "project")
        p._persist(p.items)
        return p

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "Project":
        """Open an existing project; a missing, damaged or foreign ``project.json`` gives one sentence naming it."""
        folder = cls._folder_of(folder)
        path = folder / PROJECT_FILE
        if not path.is_file():
            raise CmrError(f"{path} does not exist, so {folder} is not a cmrstudio project; create one there or choose the project's folder.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise CmrError(f"{path} cannot be read ({exc}); check the file's permissions.") from None
        except ValueError as exc:
            raise CmrError(f"{path} is not valid JSON ({exc}); it is damaged: restore it from a backup or create a new project.") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CmrError(f"{path} is not a cmrstudio project file (no \"format\": \"{FORMAT}\"); choose the project's own folder.")
        version = data.get("version")
        if version != VERSION:
            hint = "update cmrstudio to open it" if isinstance(version, int) and version > VERSION else "it cannot be read"
            raise CmrError(f"{path} is project format version {version!r}, but this cmrstudio reads version {VERSION}; {hint}.")
        raw = data.get("items", [])
        if not isinstance(raw, list):
            raise CmrError(f"{path} is damaged: its \"items\" is not a list; restore it from a backup.")
        items, seen = [], set()
        for i, d in enumerate(raw):
            try:
                it = GalleryItem.from_dict(d)
            except (TypeError, ValueError) as exc:
                raise CmrError(f"{path} is damaged at item {i + 1} ({exc}); fix or remove that entry, or restore the file from a backup.") from None
            if it.id in seen:
                raise CmrError(f"{path} lists the item id {it.id} twice; remove one of the entries.")
            seen.add(it.id)
            items.append(it)
        name = data.get("name") if isinstance(data.get("name"), str) else folder.resolve().name
        created = data.get("created") if isinstance(data.get("created"), str) else None
        last = data.get("last_number", 0)
        last = last if isinstance(last, int) and not isinstance(last, bool) and last >= 0 else 0
        project = cls(folder, name, items, created, last)
        project.recovered = project.recover()
        return project

    @classmethod
    def open_or_create(cls, folder: str | os.PathLike) -> "Project":
        folder = cls._folder_of(folder)
        if (folder / PROJECT_FILE).exists():
            return cls.open(folder)
        return cls.create(folder)

    # -- the writer's lock, and tidying after a killed writer
    @contextlib.contextmanager
    def _lock(self, wait: bool = True):
        """Hold the folder's writer lock; yields whether it is held (``wait=False`` gives up at once)."""
        if fcntl is None:
            yield wait
            return
        try:
            fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if not wait:
                yield False
                return
            raise CmrError(f"Cannot write in {self.folder} ({exc.strerror or exc}); choose a project folder you can write to.") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def recover(self) -> list[str]:
        """Tidy what a killed writer left (see the module's notes); one sentence per thing done.

        Does nothing while another writer holds the lock, or when the folder cannot be written.
        """
        done: list[str] = []
        with self._lock(wait=False) as held:
            if not held:
                return done
            try:  # what is listed now, on disk (a writer may have added an item since this object read the file)
                data = json.loads(self.path.read_text(encoding="utf-8"))
                listed = {d["id"] for d in data["items"] if isinstance(d, dict) and isinstance(d.get("id"), str)}
            except (OSError, ValueError, KeyError, TypeError):
                return done  # an unreadable listing: touch nothing
            sets: dict[str, list[Path]] = {}
            temps = [f for f in self._listdir(self.folder) if _TEMP_RE.match(f.name) and f.name.startswith(".project.")]
            for d in (self.renders_dir, self.thumbnails_dir):
                for f in self._listdir(d):
                    m = _ITEM_FILE_RE.match(f.name)
                    if m and m.group(1) not in listed:
                        sets.setdefault(m.group(1), []).append(f)
                    elif _TEMP_RE.match(f.name):
                        temps.append(f)
            for f in temps:
                with contextlib.suppress(OSError):
                    f.unlink()
            if temps:
                done.append(f"Removed {len(temps)} temporary file{'s' if len(temps) != 1 else ''} an interrupted save left in {self.folder}.")
            for iid, files in sorted(sets.items()):
                want = self._files(iid)
                complete = all(p.is_file() and p.stat().st_size > 0 for p in want.values())
                if complete:
                    dest = self.folder / UNLISTED / f"{_now().replace(':', '')}-{iid}"
                    try:
                        dest.mkdir(parents=True, exist_ok=True)
                        for f in files:
                            os.replace(f, dest / f.name)
                        done.append(f"The files of {iid}, which the gallery does not list, were moved to {dest}.")
                    except OSError:
                        continue
                else:
                    for f in files:
                        with contextlib.suppress(OSError):
                            f.unlink()
                    done.append(f"The incomplete files of {iid} (an interrupted keep or remove) were removed.")
        return done

    @staticmethod
    def _listdir(d: Path) -> list[Path]:
        try:
            return [d / n for n in os.listdir(d)]
        except OSError:
            return []

    # -- persistence
    def _persist(self, items: list[GalleryItem], last_number: int | None = None) -> None:
        data = {"format": FORMAT, "version": VERSION, "name": self.name, "created": self.created,
                "last_number": self.last_number if last_number is None else last_number,
                "items": [it.to_dict() for it in items]}
        try:
            write_text_atomic(self.path, json.dumps(jsonable(data), indent=2, ensure_ascii=False) + "\n")
        except OSError as exc:
            raise CmrError(f"Cannot save {self.path} ({exc.strerror or exc}); the project on disk is unchanged: "
                           "check that the folder is writable and has free space.") from None

    # -- items
    def item(self, item_id: str) -> GalleryItem:
        for it in self.items:
            if it.id == item_id:
                return it
        raise CmrError(f"The project {self.folder} has no item {item_id!r}; it may have been removed.")

    def _index(self, item_id: str) -> int:
        self.item(item_id)
        return next(i for i, it in enumerate(self.items) if it.id == item_id)

    def thumbnail_path(self, item_id: str) -> Path:
        self.item(item_id)
        return self._files(item_id)["thumbnail"]

    def render_files(self, item_id: str) -> dict[str, Path]:
        """Paths of an item's image, mask, json (the render's sidecar) and thumbnail."""
        self.item(item_id)
        return self._files(item_id)

    def _new_id(self) -> str:
        """The next ``rNNNN`` after every listed id and every file on disk, reserved by creating its thumbnail exclusively."""
        used = {it.id for it in self.items}
        nums = [self.last_number] + [int(m.group(1)) for i in used if (m := _AUTO_ID_RE.match(i))]
        for d in (self.renders_dir, self.thumbnails_dir):
            if d.is_dir():
                nums += [int(m.group(1)) for f in os.listdir(d) if (m := _AUTO_ID_RE.match(f))]
        n = max(nums, default=0) + 1
        try:
            self.thumbnails_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CmrError(f"Cannot write in {self.folder} ({exc.strerror or exc}); choose a project folder you can write to.") from None
        while True:
            iid = f"r{n:04d}"
            files = self._files(iid)
            if iid not in used and not any(p.exists() for p in files.values()):
                try:
                    os.close(os.open(files["thumbnail"], os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                    return iid
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise CmrError(f"Cannot write in {self.thumbnails_dir} ({exc.strerror or exc}); "
                                   "choose a project folder you can write to.") from None
            n += 1

    def add(self, result: Render, source: dict | None = None, note: str = "", rating: int | None = None,
            affine: np.ndarray | None = None) -> GalleryItem:
        """Keep a render: its files under ``renders/``, a thumbnail, then the listing (last)."""
        rating = check_rating(rating)
        if source is not None and not isinstance(source, dict):
            raise CmrError(f"The source of a kept render must be a dictionary (case_id, path, slice, ...), not {type(source).__name__}.")
        if not isinstance(note, str):
            raise CmrError(f"A note must be text, not {type(note).__name__}.")
        if np.ndim(result.image) != 2 or np.shape(result.mask) != np.shape(result.image):
            raise CmrError(f"A kept render needs a 2D image and a mask of the same shape, got {np.shape(result.image)} and {np.shape(result.mask)}.")
        r = result.record
        meta = dict(model=r.model, kind=r.kind, vendor=r.vendor, seed=r.seed, sampler=r.sampler, steps=r.steps, guidance=r.guidance,
                    seconds=r.seconds, mode=r.mode)
        with self._lock():
            return self._add(result, meta, source, note, rating, affine)

    def _add(self, result: Render, meta: dict, source: dict | None, note: str, rating: int | None,
             affine: np.ndarray | None) -> GalleryItem:
        iid = self._new_id()
        files = self._files(iid)
        try:
            result.save(self.renders_dir, iid, affine)
            rgb = _thumbnail_of(result)
            from PIL import Image

            with atomic_path(files["thumbnail"]) as tmp:
                Image.fromarray(rgb, mode="RGB").save(tmp, format="PNG")
            item = GalleryItem(id=iid, created=_now(), **meta, source=jsonable(dict(source or {})), note=note, rating=rating)
            number = int(_AUTO_ID_RE.match(iid).group(1))
            self._persist(self.items + [item], max(self.last_number, number))  # last: only a complete render is listed
        except BaseException as exc:
            for f in files.values():
                try:
                    f.unlink(missing_ok=True)
                except OSError:
                    pass
            if isinstance(exc, OSError):
                raise CmrError(f"Cannot keep the render in {self.folder} ({exc.strerror or exc}); check that the folder is "
                               "writable and has free space. Nothing was added.") from None
            raise
        self.items.append(item)
        self.last_number = max(self.last_number, number)
        return item

    def update(self, item_id: str, note: Any = KEEP, rating: Any = KEEP) -> GalleryItem:
        """Change an item's note and/or rating and save at once.

        A field not given is kept; ``rating=None`` clears the rating, ``note=None`` keeps the note.
        """
        i = self._index(item_id)
        old = self.items[i]
        new = GalleryItem(**{f.name: getattr(old, f.name) for f in fields(old)})
        if note is not KEEP and note is not None:
            if not isinstance(note, str):
                raise CmrError(f"A note must be text, not {type(note).__name__}.")
            new.note = note
        if rating is not KEEP:
            new.rating = check_rating(rating)
        items = list(self.items)
        items[i] = new
        with self._lock():
            self._persist(items)
        self.items = items
        return new

    def remove(self, item_id: str) -> None:
        """Unlist the item (saved at once), then delete its files."""
        i = self._index(item_id)
        items = self.items[:i] + self.items[i + 1:]
        with self._lock():
            self._persist(items)
            self.items = items
            for f in self._files(item_id).values():
                try:
                    f.unlink(missing_ok=True)
                except OSError:
                    pass  # unlisted already; a leftover file only keeps its id from being reused

    def load(self, item_id: str) -> Render:
        """Read a kept render back; a missing or damaged file gives one sentence naming the item and the file."""
        self.item(item_id)
        files = self._files(item_id)
        for key in ("json", "image", "mask"):
            if not files[key].is_file():
                raise CmrError(f"Gallery item {item_id} is broken: its file {files[key]} is missing; remove the item from the gallery.")
        try:
            return Render.load(self.renders_dir, item_id)
        except CmrError as exc:
            raise CmrError(f"Gallery item {item_id} cannot be read: {exc.message.rstrip('.')}; remove the item if it cannot be restored.") from None
        except Exception as exc:  # a file that parses but holds nonsense
            raise CmrError(f"Gallery item {item_id} cannot be read from {self.renders_dir} ({type(exc).__name__}: {exc}); "
                           "remove the item if it cannot be restored.") from None

    def check(self) -> list[str]:
        """One sentence per broken item (a missing or unreadable file); good items give nothing."""
        from PIL import Image

        problems = []
        for it in self.items:
            try:
                self.load(it.id)
            except CmrError as exc:
                problems.append(exc.message)
                continue
            thumb = self._files(it.id)["thumbnail"]
            try:
                with Image.open(thumb) as im:
                    im.verify()
            except FileNotFoundError:
                problems.append(f"Gallery item {it.id} has lost its thumbnail {thumb}; the render itself is fine.")
            except Exception as exc:
                problems.append(f"Gallery item {it.id} has a damaged thumbnail {thumb} ({type(exc).__name__}); the render itself is fine.")
        return problems
