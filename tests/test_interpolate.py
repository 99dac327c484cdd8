"""Interpolation between painted slices (shape-based, per structure), without a window."""

from __future__ import annotations

import numpy as np
import pytest

from cmrstudio.anatomy import LV, MYO, RV, template_mask
from cmrstudio.edits import interpolate_between, interpolate_slices, structure_sizes
from cmrstudio.errors import CmrError


def _stack(diams, shape=(96, 96), sp=1.5):
    vol = np.zeros((len(diams),) + shape, np.uint8)
    for z, d in enumerate(diams):
        if d:
            vol[z] = template_mask(shape, sp, d, 8, 30, 180)
    return vol


def test_the_slices_between_two_keys_grow_from_one_to_the_other():
    sp = (1.5, 1.5)
    vol = _stack([30, 0, 0, 0, 60])
    out = interpolate_slices(vol, 0, 4, sp)
    assert np.array_equal(out[0], vol[0]) and np.array_equal(out[4], vol[4])  # the keys stay
    d = [structure_sizes(out[z], sp)["lv_diameter"] for z in range(5)]
    assert all(a < b for a, b in zip(d, d[1:])), d  # the cavity widens slice by slice
    assert abs(d[2] - 45) < 4  # half way: half way between 30 and 60 mm
    for z in (1, 2, 3):
        labels = set(np.unique(out[z]))
        assert labels == {0, LV, MYO, RV}  # every structure, the ring closed around the cavity
        lv = out[z] == LV
        grown = np.zeros_like(lv)
        grown[1:-1, 1:-1] = lv[:-2, 1:-1] | lv[2:, 1:-1] | lv[1:-1, :-2] | lv[1:-1, 2:]
        assert not (grown & ~lv & (out[z] == 0)).any(), "the blood pool touches background: the wall has a hole"
    assert np.array_equal(vol[1], np.zeros_like(vol[1]))  # the input is not modified


def test_a_structure_on_one_key_only_tapers_off():
    vol = _stack([50, 0, 0, 0, 0])
    vol[4] = _stack([50])[0]
    vol[4][vol[4] == RV] = 0  # no RV at the apex
    out = interpolate_slices(vol, 0, 4, None)
    rv = [int((out[z] == RV).sum()) for z in range(5)]
    assert rv[0] >= rv[1] > rv[2] > rv[3] > rv[4] == 0


def test_every_gap_between_edited_slices_and_bad_input():
    vol = _stack([40, 0, 0, 50, 0, 60])
    out, filled = interpolate_between(vol, [0, 3, 5], (1.5, 1.5))
    assert filled == [1, 2, 4] and all(out[z].any() for z in range(6))
    with pytest.raises(CmrError, match="two edited slices"):
        interpolate_between(vol, [3], None)
    with pytest.raises(CmrError, match="no gap"):
        interpolate_between(vol, [2, 3], None)
    with pytest.raises(CmrError, match="both empty"):
        interpolate_slices(np.zeros((5, 32, 32), np.uint8), 0, 4)
    with pytest.raises(CmrError, match="out of range"):
        interpolate_slices(vol, 0, 9)
