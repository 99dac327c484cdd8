"""The wire format of ``cmrstudio serve``: one binary envelope for masks, images and their metadata.

An envelope is ``b"CMR1"``, a 4-byte big-endian header length, a UTF-8 JSON header, then the
arrays' bytes one after another. The header's ``"blobs"`` maps each array's name to its
``dtype`` (uint8, float16 or float32), ``shape``, ``codec`` (``raw`` or ``zlib``) and ``nbytes``
(on the wire). Masks travel as zlib-compressed uint8 (a painted slice compresses 50-100×), images
as float16 (raw on loopback, where compressing costs more than it saves) or uint8 with a scale.

Decoding is defensive: the header and every array are checked against limits before anything is
allocated, zlib output is capped at the size the shape promises (no decompression bombs), and
every problem is a :class:`~cmrstudio.errors.CmrError` with one sentence.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import numpy as np

from cmrstudio.errors import CmrError

MAGIC = b"CMR1"
MAX_HEADER = 64 * 1024
MAX_SIDE = 2048  # an array's side in pixels: a cardiac slice is at most ~1024
MAX_PIXELS = MAX_SIDE * MAX_SIDE
DTYPES = {"uint8": np.uint8, "float16": np.float16, "float32": np.float32}


def encode(header: dict, arrays: dict[str, np.ndarray] | None = None, compress: bool | dict[str, bool] = False) -> bytes:
    """An envelope for a JSON-able ``header`` and named arrays; ``compress``: zlib for all arrays, or per name."""
    blobs, parts = {}, []
    for name, arr in (arrays or {}).items():
        a = np.ascontiguousarray(arr)
        if a.dtype.name not in DTYPES:
            raise CmrError(f"The array '{name}' is {a.dtype}; the wire carries {', '.join(DTYPES)} only.")
        z = compress.get(name, False) if isinstance(compress, dict) else compress
        data = zlib.compress(a.tobytes(), 1) if z else a.tobytes()
        blobs[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "codec": "zlib" if z else "raw", "nbytes": len(data)}
        parts.append(data)
    head = json.dumps({**header, "blobs": blobs}, separators=(",", ":"), allow_nan=False).encode()
    return b"".join([MAGIC, struct.pack(">I", len(head)), head, *parts])


def decode(data: bytes, max_bytes: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, arrays) from an envelope; anything malformed or too large is refused in one sentence."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CmrError("The message is not a binary cmrstudio envelope; send masks as binary messages.")
    data = memoryview(data)
    if max_bytes is not None and len(data) > max_bytes:
        raise CmrError(f"The message is {len(data)} bytes, over the server's limit of {max_bytes} bytes.")
    if len(data) < 8 or bytes(data[:4]) != MAGIC:
        raise CmrError("The message is not a cmrstudio envelope (it does not start with CMR1).")
    (n,) = struct.unpack(">I", data[4:8])
    if n > MAX_HEADER or 8 + n > len(data):
        raise CmrError(f"The message's header length {n} is impossible (at most {MAX_HEADER} bytes, within the message).")
    try:
        header = json.loads(bytes(data[8:8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CmrError(f"The message's header is not JSON ({exc}).") from None
    if not isinstance(header, dict):
        raise CmrError("The message's header is not a JSON object.")
    blobs = header.pop("blobs", {}) or {}
    if not isinstance(blobs, dict):
        raise CmrError("The message's 'blobs' is not an object.")
    arrays, at = {}, 8 + n
    for name, b in blobs.items():
        arrays[name] = _array(name, b, data, at)
        at += int(b["nbytes"])
    if at != len(data):
        raise CmrError(f"The message has {len(data) - at} bytes beyond its arrays; it is malformed.")
    return header, arrays


def _array(name: str, b: Any, data: memoryview, at: int) -> np.ndarray:
    try:
        dtype = DTYPES[b["dtype"]]
        shape = tuple(int(s) for s in b["shape"])
        codec, nbytes = b.get("codec", "raw"), int(b["nbytes"])
    except (KeyError, TypeError, ValueError):
        raise CmrError(f"The array '{name}' is described wrongly (it needs dtype {'/'.join(DTYPES)}, shape and nbytes).") from None
    if not 1 <= len(shape) <= 3 or min(shape) < 1 or max(shape[-2:]) > MAX_SIDE or int(np.prod(shape)) > MAX_PIXELS:
        raise CmrError(f"The array '{name}' has shape {list(shape)}; at most {MAX_SIDE}×{MAX_SIDE} pixels are accepted.")
    if nbytes < 0 or at + nbytes > len(data):
        raise CmrError(f"The array '{name}' claims {nbytes} bytes, more than the message holds.")
    want = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = data[at:at + nbytes]
    if codec == "zlib":
        d = zlib.decompressobj()
        try:
            out = d.decompress(raw, want + 1)
        except zlib.error as exc:
            raise CmrError(f"The array '{name}' is not valid zlib data ({exc}).") from None
        if len(out) != want or d.unconsumed_tail:
            raise CmrError(f"The array '{name}' decompresses to a size other than its shape {list(shape)} ({np.dtype(dtype).name}) needs.")
    elif codec == "raw":
        out = bytes(raw)
        if len(out) != want:
            raise CmrError(f"The array '{name}' has {len(out)} bytes; its shape {list(shape)} ({np.dtype(dtype).name}) needs {want}.")
    else:
        raise CmrError(f"The array '{name}' uses codec {codec!r}; use raw or zlib.")
    return np.frombuffer(out, dtype=dtype).reshape(shape)


def image_out(img: np.ndarray, fmt: str) -> tuple[np.ndarray, dict]:
    """An image for the wire: float16, or uint8 with its (low, high) scale."""
    a = np.asarray(img, np.float32)
    if fmt == "uint8":
        lo, hi = float(np.min(a)), float(np.max(a))
        q = np.round((a - lo) / (hi - lo) * 255) if hi > lo else np.zeros_like(a)
        return q.astype(np.uint8), {"lo": lo, "hi": hi}
    return a.astype(np.float16), {}


def image_in(arr: np.ndarray, scale: dict | None) -> np.ndarray:
    """An image back from the wire as float32."""
    a = np.asarray(arr, np.float32)
    if arr.dtype == np.uint8 and scale:
        a = scale["lo"] + a / 255.0 * (scale["hi"] - scale["lo"])
    return a.astype(np.float32)
