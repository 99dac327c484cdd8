"""Quick mask edits: grow/shrink structures in mm, copy slices, templates and phantoms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cmrstudio.anatomy import BG, LV, MYO, RV, enclosure, template_mask
from cmrstudio.edits import (change_structure, change_volume, copy_slice, phantom_mask, structure_sizes, template_volume,
                             wall_thickness_mm)
from cmrstudio.errors import CmrError

SP = (1.25, 1.25)


def _frozen(a: np.ndarray) -> np.ndarray:
    """A read-only copy: any in-place write by the code under test raises."""
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


def _ring_closed(m: np.ndarray) -> bool:
    e = enclosure(m)
    lv_touches_bg = (ndimage.binary_dilation(m == LV, np.ones((3, 3), bool)) & (m == BG)).any()
    return e["lv_inside"] == 1.0 and e["rv_inside_px"] == 0 and not lv_touches_bg


@pytest.fixture(params=["template", "phantom"])
def slice_(request):
    if request.param == "template":
        return _frozen(template_mask((160, 160), 1.25))
    return _frozen(phantom_mask((160, 160), SP, seed=4))


def test_growing_the_lv_dilates_it_and_the_wall_moves_with_it(slice_):
    before = np.array(slice_)
    s0 = structure_sizes(slice_, SP)
    out = change_structure(slice_, LV, 5.0, SP)
    s1 = structure_sizes(out, SP)
    assert out.dtype == np.uint8 and np.array_equal(slice_, before)  # input untouched
    assert s1["lv_diameter"] - s0["lv_diameter"] == pytest.approx(10.0, abs=1.5)
    assert s1["wall_thickness_median"] == pytest.approx(s0["wall_thickness_median"], abs=1.5)
    assert _ring_closed(out)
    # the RV under the new epicardium became myocardium; nothing else of the RV changed
    assert (out == RV).sum() < (slice_ == RV).sum()
    assert not ((out == RV) & (slice_ != RV)).any()
    assert set(np.unique(out[(slice_ == RV) & (out != RV)])) <= {MYO}


def test_shrinking_the_lv_keeps_the_ring_and_frees_pixels_to_background(slice_):
    s0 = structure_sizes(slice_, SP)
    out = change_structure(slice_, LV, -5.0, SP)
    s1 = structure_sizes(out, SP)
    assert s0["lv_diameter"] - s1["lv_diameter"] == pytest.approx(10.0, abs=1.5)
    assert s1["wall_thickness_median"] == pytest.approx(s0["wall_thickness_median"], abs=1.5)
    assert _ring_closed(out)
    freed = (slice_ != BG) & (slice_ != RV) & ~np.isin(out, (LV, MYO))
    assert freed.any() and np.all(out[freed] == BG)
    assert np.array_equal(out == RV, slice_ == RV)  # the RV is left alone
    with pytest.raises(CmrError, match="would remove it entirely"):
        change_structure(slice_, LV, -60.0, SP)


def test_thickening_the_wall_moves_the_epicardium_and_keeps_the_cavity(slice_):
    s0 = structure_sizes(slice_, SP)
    out = change_structure(slice_, MYO, 3.0, SP)
    s1 = structure_sizes(out, SP)
    assert np.array_equal(out == LV, slice_ == LV)
    assert s1["wall_thickness_median"] - s0["wall_thickness_median"] == pytest.approx(3.0, abs=1.5)
    assert s1["wall_thickness"] - s0["wall_thickness"] == pytest.approx(3.0, abs=1.5)
    assert (out == MYO).sum() > (slice_ == MYO).sum() and _ring_closed(out)
    grown = (out == MYO) & (slice_ != MYO)
    assert set(np.unique(slice_[grown])) <= {BG, RV}  # into background and RV, never the cavity
    # thinning: the cavity stays, the ring stays closed, even when thinned by more than the wall
    thin = change_structure(slice_, MYO, -3.0, SP)
    assert np.array_equal(thin == LV, slice_ == LV)
    assert s0["wall_thickness_median"] - structure_sizes(thin, SP)["wall_thickness_median"] == pytest.approx(3.0, abs=1.5)
    assert _ring_closed(thin) and _ring_closed(change_structure(slice_, MYO, -30.0, SP))


def test_the_rv_grows_into_background_only_and_shrinks_back(slice_):
    for mm in (5.0, 40.0):
        out = change_structure(slice_, RV, mm, SP)
        assert np.array_equal(out == LV, slice_ == LV) and np.array_equal(out == MYO, slice_ == MYO)
        assert set(np.unique(slice_[out != slice_])) == {BG} and (out == RV).sum() > (slice_ == RV).sum()
        assert ndimage.label(out == RV)[1] == ndimage.label(slice_ == RV)[1]  # grown from the RV, not elsewhere
    a5 = (change_structure(slice_, RV, 5.0, SP) == RV).sum()
    assert a5 < (change_structure(slice_, RV, 10.0, SP) == RV).sum()
    out = change_structure(slice_, RV, -4.0, SP)
    assert (out == RV).sum() < (slice_ == RV).sum() and not ((out == RV) & (slice_ != RV)).any()
    assert np.array_equal(np.isin(out, (LV, MYO)), np.isin(slice_, (LV, MYO)))
    assert set(np.unique(out[out != slice_])) == {BG}


def test_anisotropic_spacing_grows_the_same_millimetres_along_rows_and_columns():
    sp = (2.5, 1.25)  # rows twice as coarse as columns
    m = _frozen(phantom_mask((80, 160), sp, seed=2))
    rows0, cols0 = ndimage.find_objects((m == LV).astype(int))[0]
    out = change_structure(m, LV, 5.0, sp)
    rows1, cols1 = ndimage.find_objects((out == LV).astype(int))[0]
    grow_rows = (rows1.stop - rows1.start) - (rows0.stop - rows0.start)
    grow_cols = (cols1.stop - cols1.start) - (cols0.stop - cols0.start)
    assert grow_rows == pytest.approx(4, abs=1)  # 2 × 5 mm / 2.5 mm
    assert grow_cols == pytest.approx(8, abs=1)  # 2 × 5 mm / 1.25 mm
    assert structure_sizes(out, sp)["lv_diameter"] - structure_sizes(m, sp)["lv_diameter"] == pytest.approx(10.0, abs=2.0)
    # unknown spacing: the amount is in pixels
    iso = _frozen(template_mask((120, 120), 1.25))
    assert np.array_equal(change_structure(iso, LV, 4.0, None), change_structure(iso, LV, 5.0, SP))
    assert structure_sizes(iso)["unit"] == "px" and structure_sizes(iso, SP)["unit"] == "mm"


def test_bad_requests_give_sentences():
    m = template_mask((96, 96), 1.25)
    with pytest.raises(CmrError, match="slice has no LV to grow; paint it first"):
        change_structure(np.where(m == LV, MYO, m), LV, 3.0, SP)
    with pytest.raises(CmrError, match="no RV to shrink"):
        change_structure(np.where(m == RV, BG, m), RV, -3.0, SP)
    for bad in (0, 4, 1.0, True, "LV"):
        with pytest.raises(CmrError, match=r"use LV \(1\), MYO \(2\) or RV \(3\)"):
            change_structure(m, bad, 3.0, SP)
    bad_mask = m.copy()
    bad_mask[0, 0] = 7
    with pytest.raises(CmrError, match="label value 7"):
        change_structure(bad_mask, LV, 3.0, SP)
    with pytest.raises(CmrError, match="3 dimensions"):
        change_structure(m[None], LV, 3.0, SP)
    with pytest.raises(CmrError, match="spacing"):
        change_structure(m, LV, 3.0, (1.25, -1.0))
    with pytest.raises(CmrError, match="not a finite number"):
        change_structure(m, LV, float("nan"), SP)
    assert np.array_equal(change_structure(m, LV, 0.0, SP), m)


def test_change_volume_edits_every_slice_holding_the_label_or_the_chosen_ones():
    vol = _frozen(template_volume((6, 96, 96), (8.0, 1.25, 1.25)))
    out = change_volume(vol, LV, 3.0, (8.0, 1.25, 1.25))
    for z in range(6):
        assert np.array_equal(out[z], change_structure(vol[z], LV, 3.0, SP))
    one = change_volume(vol, LV, 3.0, (8.0, 1.25, 1.25), slices=[2])
    assert np.array_equal(one[2], out[2]) and np.array_equal(np.delete(one, 2, 0), np.delete(vol, 2, 0))
    with pytest.raises(CmrError, match="out of range.*0–5"):
        change_volume(vol, LV, 3.0, None, slices=[6])
    holed = np.array(vol)
    holed[4][holed[4] == RV] = BG
    rv_out = change_volume(holed, RV, 3.0, (8.0, 1.25, 1.25))  # slices without RV are skipped
    assert np.array_equal(rv_out[4], holed[4]) and (rv_out[0] == RV).sum() > (holed[0] == RV).sum()
    with pytest.raises(CmrError, match="Slice 4: This slice has no RV"):
        change_volume(holed, RV, 3.0, None, slices=[3, 4])
    with pytest.raises(CmrError, match="no RV on any slice"):
        change_volume(np.where(vol == RV, BG, vol), RV, 3.0)


def test_copy_slice():
    vol = _frozen(template_volume((5, 64, 64), (8.0, 2.0, 2.0)))
    out = copy_slice(vol, 0, 4)
    assert np.array_equal(out[4], vol[0]) and np.array_equal(out[:4], vol[:4]) and not np.array_equal(vol[4], vol[0])
    for src, dst in ((5, 0), (0, -1)):
        with pytest.raises(CmrError, match="out of range; this volume has slices 0–4"):
            copy_slice(vol, src, dst)
    with pytest.raises(CmrError, match="1.0 is not a whole slice number; this volume has slices 0–4"):
        copy_slice(vol, 1.0, 2)


def test_template_volume_tapers_towards_the_apex():
    sp = (8.0, 1.25, 1.25)
    vol = template_volume((9, 128, 128), sp)
    d = [structure_sizes(s, SP)["lv_diameter"] for s in vol]
    rv = [structure_sizes(s, SP)["rv_area"] for s in vol]
    assert d[0] == pytest.approx(50.0, abs=1.5) and len(set(np.round(d[:6], 6))) == 1  # base and middle: full size
    assert all(a > b for a, b in zip(d[5:], d[6:])) and d[-1] < 0.5 * d[0]
    assert all(a > b for a, b in zip(rv[5:], rv[6:]))
    walls = [structure_sizes(s, SP)["wall_thickness_median"] for s in vol]
    assert max(walls) - min(walls) < 2.0  # the wall keeps its thickness
    flat = template_volume((9, 128, 128), sp, taper=False)
    assert all(np.array_equal(s, flat[0]) for s in flat)
    assert np.array_equal(template_volume((3, 64, 64), None, taper=False)[0], template_mask((64, 64), 1.0))
    # anisotropic pixels: the LV is still 50 mm across in both directions
    an = template_volume((1, 64, 128), (8.0, 2.5, 1.25))[0]
    rows, cols = ndimage.find_objects((an == LV).astype(int))[0]
    assert (rows.stop - rows.start) * 2.5 == pytest.approx(50, abs=3) and (cols.stop - cols.start) * 1.25 == pytest.approx(50, abs=3)
    assert structure_sizes(an, (2.5, 1.25))["wall_thickness_median"] == pytest.approx(9.0, abs=2.5)


def test_phantom_mask_fits_the_grid():
    m = phantom_mask((128, 128), SP, seed=1)
    assert m.shape == (128, 128) and m.dtype == np.uint8 and set(np.unique(m)) == {BG, LV, MYO, RV}
    assert np.array_equal(m, phantom_mask((128, 128), SP, seed=1)) and not np.array_equal(m, phantom_mask((128, 128), SP, seed=2))
    ed, es = structure_sizes(m, SP), structure_sizes(phantom_mask((128, 128), SP, phase="ES", seed=1), SP)
    assert 35 < ed["lv_diameter"] < 55 and es["lv_diameter"] < 0.8 * ed["lv_diameter"]
    assert 5 < ed["wall_thickness_median"] < 14 and es["wall_thickness_median"] > ed["wall_thickness_median"]
    # the same heart in mm on other grids: coarser, anisotropic, no spacing (1 mm)
    for shape, sp in (((64, 64), (2.5, 2.5)), ((80, 160), (2.5, 1.25)), ((160, 160), None)):
        other = phantom_mask(shape, sp, seed=1)
        assert set(np.unique(other)) == {BG, LV, MYO, RV}
        assert structure_sizes(other, sp or (1.0, 1.0))["lv_diameter"] == pytest.approx(ed["lv_diameter"], abs=3.0)
    assert _ring_closed(m)
    with pytest.raises(CmrError, match="Phase 'XX'"):
        phantom_mask((64, 64), SP, phase="XX")


def test_structure_sizes():
    m = template_mask((128, 128), 1.0, lv_diameter_mm=40, wall_mm=8)
    s = structure_sizes(m, (1.0, 1.0))
    assert s["lv_diameter"] == pytest.approx(40, abs=1) and s["wall_thickness_median"] == pytest.approx(8, abs=1.5)
    assert s["rv_area"] == pytest.approx((m == RV).sum())
    s2 = structure_sizes(m, (2.0, 2.0))
    assert s2["lv_diameter"] == pytest.approx(2 * s["lv_diameter"]) and s2["rv_area"] == pytest.approx(4 * s["rv_area"])
    assert structure_sizes(np.zeros((32, 32), np.uint8), SP) == {"unit": "mm", "lv_diameter": None, "wall_thickness": None,
                                                                 "wall_thickness_median": None, "rv_area": None}
    assert wall_thickness_mm(m, (2.0, 2.0)) == pytest.approx(2 * wall_thickness_mm(m, None))
