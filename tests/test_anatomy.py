import numpy as np
import pytest

from cmrstudio.anatomy import (
    LV, MYO, RV, check_mask, enclosure, rasterise_contours, remap, summarise, template_mask, wall_thickness_px,
)
from cmrstudio.errors import CmrError


def test_remap_acdc_swaps_lv_and_rv():
    acdc = np.array([[0, 1, 2, 3]], dtype=np.uint8)
    assert remap(acdc, "acdc").tolist() == [[0, RV, MYO, LV]]
    assert remap(acdc, "mnms").tolist() == [[0, LV, MYO, RV]]


def test_remap_rejects_label_7_with_a_sentence_naming_the_file():
    bad = np.array([[0, 1, 7]], dtype=np.uint8)
    with pytest.raises(CmrError) as err:
        remap(bad, "mnms", where="The mask /data/x_gt.nii.gz")
    msg = str(err.value)
    assert "/data/x_gt.nii.gz" in msg and "7" in msg and "convention" in msg


def test_template_mask_is_anatomically_clean_and_wall_thickness_is_measured():
    for wall in (5.0, 9.0, 16.0):
        m = template_mask((160, 160), spacing_mm=1.0, wall_mm=wall)
        assert set(np.unique(m)) == {0, LV, MYO, RV}
        assert [f for f in check_mask(m, (1.0, 1.0)) if f.severity != "info"] == []
        assert abs(np.median(wall_thickness_px(m)) - wall) < 1.5


def test_checks_find_each_problem():
    m = template_mask((128, 128), spacing_mm=1.25)
    codes = lambda mm, sp=(1.25, 1.25): {f.code for f in check_mask(mm, sp)}
    # RV painted inside the ring
    inside = m.copy()
    inside[60:66, 60:66] = RV
    assert "rv-inside-lv" in codes(inside)
    # ring opened: erase a wedge of myocardium
    open_ring = m.copy()
    open_ring[:, 64:] = np.where(open_ring[:, 64:] == MYO, 0, open_ring[:, 64:])
    assert "ring-open" in codes(open_ring)
    # LV touching RV: replace all myocardium by LV
    touching = m.copy()
    touching[touching == MYO] = LV
    assert "lv-touches-rv" in codes(touching) or "lv-without-myo" in codes(touching)
    # implausible wall: 1.25 mm pixels but spacing claims 10 mm
    assert "wall-thickness" in codes(m, (10.0, 10.0))
    # unknown spacing: no mm judgement, a pixel figure instead
    assert "wall-unknown-mm" in codes(m, None)
    # label 7 is a finding, not an exception
    bad = m.copy()
    bad[0, 0] = 7
    f = [x for x in check_mask(bad) if x.code == "unknown-label"]
    assert f and "7" in f[0].message


def test_rasterise_contours_makes_lv_and_ring():
    t = np.linspace(0, 2 * np.pi, 80, endpoint=False)
    endo = np.stack([50 + 10 * np.cos(t), 40 + 10 * np.sin(t)], 1)  # x, y
    epi = np.stack([50 + 16 * np.cos(t), 40 + 16 * np.sin(t)], 1)
    m = rasterise_contours((100, 100), endo, epi)
    assert m[40, 50] == LV and m[40, 50 + 13] == MYO and m[40, 50 + 20] == 0
    assert abs((m == LV).sum() - np.pi * 100) / (np.pi * 100) < 0.1
    e = enclosure(m)
    assert e["lv_inside"] == 1.0


def test_summarise_groups_repeated_findings():
    m = np.zeros((3, 64, 64), np.uint8)
    m[:, 20:30, 20:30] = LV
    lines = summarise(check_mask(m))
    assert len(lines) == 1 and "slices 0, 1, 2" in lines[0]
