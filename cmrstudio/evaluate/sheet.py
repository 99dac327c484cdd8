"""Contact sheets: renders of held-out masks beside the real slices those masks were drawn on.

One row per mask (spread over the cases, the slice with the most heart of each), columns:
the mask, the real slice, then for each model its fully synthetic renders (several seeds) and its
render in this patient. Every tile is shown like a reader-study item: its own 0.5–99.5 percentile
window. ``full`` shows whole slices (the scan's field of view) instead of the 160 mm heart frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmrstudio.errors import CmrError

TILE = 192


def _window(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, (0.5, 99.5))
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def _tile(img01: np.ndarray, size: int = TILE) -> np.ndarray:
    from PIL import Image

    h, w = img01.shape
    s = size / max(h, w)
    im = Image.fromarray((np.clip(img01, 0, 1) * 255).astype(np.uint8)).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
    out = np.zeros((size, size), np.uint8)
    a = np.asarray(im)
    y0, x0 = (size - a.shape[0]) // 2, (size - a.shape[1]) // 2
    out[y0:y0 + a.shape[0], x0:x0 + a.shape[1]] = a
    return np.repeat(out[..., None], 3, axis=2)


def _mask_tile(mask: np.ndarray, size: int = TILE) -> np.ndarray:
    from PIL import Image

    from cmrstudio.anatomy import COLOURS

    rgb = np.zeros(mask.shape + (3,), np.uint8)
    for lab in (1, 2, 3):
        rgb[mask == lab] = (np.array(COLOURS[lab][:3]) * 255).astype(np.uint8)
    h, w = mask.shape
    s = size / max(h, w)
    im = Image.fromarray(rgb).resize((max(1, round(w * s)), max(1, round(h * s))), Image.NEAREST)
    out = np.zeros((size, size, 3), np.uint8)
    a = np.asarray(im)
    y0, x0 = (size - a.shape[0]) // 2, (size - a.shape[1]) // 2
    out[y0:y0 + a.shape[0], x0:x0 + a.shape[1]] = a
    return out


def pick_slices(cases, rows: int) -> list[tuple[object, int]]:
    """(case, slice) pairs: the slice with the most heart of each case, spread over the cases."""
    picks = []
    for c in cases:
        if c.image is None or c.mask is None:
            continue
        area = (c.mask > 0).reshape(c.shape[0], -1).sum(1)
        if area.max() > 0:
            picks.append((c, int(np.argmax(area))))
    if not picks:
        raise CmrError("None of the given cases has an image and a mask with heart labels to show.")
    idx = np.linspace(0, len(picks) - 1, min(rows, len(picks))).round().astype(int)
    return [picks[i] for i in dict.fromkeys(idx.tolist())]


def contact_sheet(cases, models: list[str], out: str | Path, seeds: int = 2, rows: int = 6, full: bool = False,
                  device: str | None = None) -> Path:
    from PIL import Image, ImageDraw

    from cmrstudio.data.frame import to_frame
    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.engine.scene import SliceContext
    from cmrstudio.io.common import atomic_path

    rs = [open_renderer(m, device=device) for m in models]
    picks = pick_slices(cases, rows)
    headers = ["mask", "real"]
    for r in rs:
        headers += [f"{r.name} s{s}" for s in range(seeds)]
        if r.scene:
            headers.append(f"{r.name} in patient")
    grid = []
    for c, z in picks:
        row = []
        r0 = rs[0]
        frame = r0.frame_for(c.mask, c.spacing, image=c.image)
        real_framed = to_frame(c, frame).image[z]
        row.append(_mask_tile(c.mask[z] if full else to_frame(c, frame).mask[z]))
        row.append(_tile(_window(c.image[z] if full else real_framed)))
        for r in rs:
            fr = r.frame_for(c.mask, c.spacing, image=c.image)
            for s in range(seeds):
                ctx = SliceContext("synthetic") if r.scene else None
                native, framed = r.render_slice(c.mask[z], fr, c.vendor, 101 + s, ctx)
                row.append(_tile(_window(native if full else framed)))
            if r.scene:
                native, framed = r.render_slice(c.mask[z], fr, c.vendor, 101, SliceContext("in-patient", c.image[z], c.mask[z]))
                row.append(_tile(_window(native if full else framed)))
        grid.append(np.concatenate(row, axis=1))
    body = np.concatenate(grid, axis=0)
    head = Image.new("RGB", (body.shape[1], 22), (0, 0, 0))
    d = ImageDraw.Draw(head)
    for i, h in enumerate(headers):
        d.text((i * TILE + 4, 5), h, fill=(255, 255, 255))
    sheet = np.concatenate([np.asarray(head), body], axis=0)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")
    return out
