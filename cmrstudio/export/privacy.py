"""What an export may say about where a render came from, and what it must not.

A kept render remembers its source scan (the gallery's ``source``: case id, path, slice, phase,
dataset), its project's folder, and, in a folder of renders, a file name that often holds the
source's case id. None of that leaves cmrstudio unless the user asks (``--keep-source-ids``):

- the source is described by its dataset (``mnms``, ``sunnybrook``, ...), a **case hash** and the
  slice and phase. The hash is sha256 of a random per-export salt, the dataset and the case id: renders
  of one source case share it within an export (so a data split can keep a patient's slices together),
  but it cannot be looked up in a list of public case ids, nor linked between two exports, because the
  salt is never written anywhere;
- render ids that are not cmrstudio's own neutral gallery ids (``r0001``) are replaced by new ones;
- every string that could name the source (paths, case ids and their patient part, file and folder
  names) is removed from free text too (notes, the reasons a render was skipped): :class:`Scrubber`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from pathlib import Path
from typing import Any

NEUTRAL_ID = re.compile(r"^r\d{4,}$")  # a gallery id, made by cmrstudio: nothing of the source in it
PUBLIC_SOURCE_KEYS = ("dataset", "case_hash", "slice", "phase", "vendor")
_SUFFIX = re.compile(r"(_(ed|es)|_frame\d+|_sa|_mask|_image|_gt|_s\d+)+$", re.IGNORECASE)
_FILE_SUFFIX = re.compile(r"(\.nii\.gz|\.nii|\.mha|\.mhd|\.nrrd|\.nhdr|\.h5|\.hdf5|\.hdf|\.dcm|\.json)$", re.IGNORECASE)
SOURCE_ID = "[source id]"
SOURCE_PATH = "[source path]"


def new_salt() -> str:
    return secrets.token_hex(16)


def case_hash(salt: str, dataset: Any, case_id: Any) -> str:
    """16 hex digits of sha256(salt, dataset, case id): the same source case gives the same hash within one export."""
    return hashlib.sha256(f"{salt}\0{dataset or ''}\0{case_id}".encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _path_strings(p: Any, parts: bool) -> list[str]:
    """A path as given, resolved and as a file:// URI; with ``parts``, its last component and that without suffixes
    too (a scan's file or series folder is often named after the patient) when it holds a digit."""
    if not isinstance(p, (str, Path)) or not str(p).strip():
        return []
    s = str(p)
    out = [s]
    try:
        path = Path(s).expanduser()
        out += [str(path.resolve()), path.resolve().as_uri()]
        if parts and path.name:
            stem = _FILE_SUFFIX.sub("", path.name)
            out += [x for x in (path.name, stem, _SUFFIX.sub("", stem)) if re.search(r"\d", x)]
    except (OSError, ValueError, RuntimeError):
        pass
    return out


def id_strings(case_id: Any) -> list[str]:
    """A case id and its patient part (without the phase, frame, mask or seed suffix) when that holds a digit."""
    if not isinstance(case_id, str) or not case_id.strip():
        return []
    base = _SUFFIX.sub("", case_id)
    return [case_id] + ([base] if re.search(r"\d", base) else [])


def source_identifiers(source: dict | None) -> list[tuple[str, str]]:
    """(string, replacement) for what in a gallery ``source`` names the scan: its case id, its path, their parts."""
    if not isinstance(source, dict):
        return []
    out = [(s, SOURCE_ID) for s in id_strings(source.get("case_id")) + id_strings(source.get("case"))]
    for key in ("path", "image", "mask", "mask_path", "file"):
        out += [(s, SOURCE_PATH) for s in _path_strings(source.get(key), parts=True)]
    return out


def path_identifiers(path: Any, parts: bool = False) -> list[tuple[str, str]]:
    """A folder's path (a project, a folder of renders): only the path itself, its name may be any word."""
    return [(s, SOURCE_PATH) for s in _path_strings(path, parts)]


class Scrubber:
    """Replaces identifying strings in text and in JSON-like objects (keys too)."""

    MIN_LENGTH = 4  # shorter strings ('ED', 'sa', a one-letter folder) name nothing and would mangle text

    def __init__(self) -> None:
        self._pairs: dict[str, str] = {}

    def add(self, pairs: list[tuple[str, str]]) -> None:
        for s, repl in pairs:
            s = str(s)
            if len(s) >= self.MIN_LENGTH and s not in (SOURCE_ID, SOURCE_PATH):
                self._pairs.setdefault(s, repl)

    @property
    def strings(self) -> list[str]:
        return sorted(self._pairs, key=len, reverse=True)

    def text(self, s: str) -> str:
        for needle in self.strings:  # longest first: a path before the folder name inside it; whole tokens only
            if needle in s:
                s = re.sub(rf"(?<![A-Za-z0-9]){re.escape(needle)}(?![A-Za-z0-9])", lambda _m, r=self._pairs[needle]: r, s)
        return s

    def obj(self, o: Any) -> Any:
        if isinstance(o, dict):
            return {self.text(str(k)): self.obj(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [self.obj(v) for v in o]
        if isinstance(o, str):
            return self.text(o)
        if isinstance(o, Path):
            return self.text(str(o))
        return o


def public_source(raw: dict | None, salt: str, keep: bool) -> dict:
    """The source as an export writes it: dataset, case hash, slice, phase, vendor (and, with ``keep``, all of it)."""
    raw = dict(raw or {})
    cid = raw.get("case_id") if raw.get("case_id") is not None else raw.get("case")
    out = {k: raw[k] for k in PUBLIC_SOURCE_KEYS if raw.get(k) is not None}
    if cid is not None:
        out["case_hash"] = case_hash(salt, raw.get("dataset"), cid)
    if keep:
        out = {**raw, **out}
    return out
