import numpy as np
import pytest

from cmrstudio.anatomy import template_mask
from cmrstudio.case import Case
from cmrstudio.data.frame import Frame, from_frame, make_frame, to_frame
from cmrstudio.data.phantom import phantom_case
from cmrstudio.errors import CmrError


def test_default_frame_is_128_at_1p25mm_and_heart_centred():
    c = phantom_case(3)
    fc = to_frame(c)
    assert fc.image.shape == (8, 128, 128) and fc.mask.shape == (8, 128, 128)
    assert fc.frame.spacing_mm == 1.25
    assert fc.frame.step == pytest.approx((1.25 / 1.5, 1.25 / 1.5))
    pts = np.argwhere(fc.mask > 0)
    assert np.allclose(pts[:, 1:].mean(0), 63.5, atol=3)  # heart at the centre
    assert 0.0 <= fc.image.min() and fc.image.max() <= 1.0
    # physical size preserved: LV area in mm^2 the same in both grids (within 5%)
    lv_native = (c.mask == 1).sum() * 1.5 * 1.5
    lv_frame = (fc.mask == 1).sum() * 1.25 * 1.25
    assert abs(lv_native - lv_frame) / lv_native < 0.05


def test_native_resolution_frame_round_trips_exactly():
    c = phantom_case(5, shape=(150, 170))
    fr = make_frame(c, size=256, step=1.0)
    back = from_frame(to_frame(c, fr).mask, fr, "mask")
    assert back.shape == c.mask.shape
    assert np.array_equal(back, c.mask)


def test_image_inverse_restores_intensities_inside_the_frame():
    c = phantom_case(1)
    fr = make_frame(c, size=200, step=1.0)
    fc = to_frame(c, fr)
    back = from_frame(fc.image, fr, "image")
    lo, hi = fr.intensity
    inside = (c.image > lo) & (c.image < hi)  # unclipped values come back exactly
    assert np.allclose(back[inside], c.image[inside], rtol=1e-4, atol=1e-2)


def test_unknown_spacing_frame_uses_heart_extent_and_records_none():
    m = template_mask((200, 200), 1.0)[None]
    c = Case(np.random.default_rng(0).random(m.shape).astype(np.float32), m, None)
    fr = make_frame(c)
    assert fr.spacing_mm is None and fr.extra["spacing_known"] is False
    fc = to_frame(c, fr)
    pts = np.argwhere(fc.mask[0] > 0)
    extent = np.ptp(pts, 0).max() + 1
    assert 128 / 1.8 < extent < 128 / 1.4  # heart fills ~1/1.6 of the frame


def test_frame_record_round_trips_through_json_and_rejects_garbage():
    import json

    fr = make_frame(phantom_case(0))
    again = Frame.from_dict(json.loads(json.dumps(fr.to_dict())))
    assert again == fr
    with pytest.raises(CmrError, match="frame record"):
        Frame.from_dict({"size": 128})


@pytest.mark.parametrize("size,step,centre", [(128, (0.914, 0.914), None), (96, (1.7, 1.2), (5.5, 60.25)), (200, (1.0, 1.0), (-20.0, 250.0))])
def test_mask_lookup_and_box_resampling_equal_whole_grid_resampling(size, step, centre):
    """The live path's shortcuts (a cached nearest-pixel lookup for masks, resampling only a changed box back into
    the scan) give exactly what resampling the whole grid gives, also for frames reaching past the scan's edges."""
    from scipy import ndimage

    from cmrstudio.data.frame import frame_mask, from_frame_box, native_box

    rng = np.random.default_rng(0)
    native = (70, 90)
    c = centre or (native[0] / 2, native[1] / 2)
    fr = Frame(size, native, (c[0] - step[0] * size / 2, c[1] - step[1] * size / 2), step, 1.25, (10.0, 250.0))
    mask = rng.integers(0, 4, (3, *native)).astype(np.uint8)
    ref = np.stack([ndimage.map_coordinates(m, fr.coords(), order=0, mode="constant", cval=0, prefilter=False) for m in mask])
    got = frame_mask(mask, fr)
    assert got.dtype == np.uint8 and got.shape == (3, size, size) and np.array_equal(got, ref)
    assert np.array_equal(frame_mask(mask[1], fr), ref[1])
    img = rng.random((size, size)).astype(np.float32)
    g = fr.native_coords()
    lo, hi = fr.intensity
    whole = ndimage.map_coordinates(img, g, order=1, mode="nearest", prefilter=False) * (hi - lo) + lo  # every native pixel
    inside = (g[0] >= -0.5) & (g[0] <= size - 0.5) & (g[1] >= -0.5) & (g[1] <= size - 0.5)
    back = from_frame(img, fr)
    assert np.allclose(back[inside], whole[inside], atol=1e-4) and not back[~inside].any()  # zeros beyond the frame
    for box in [(0, size, 0, size), (10, 40, size - 30, size), (size // 3, size // 3 + 17, 3, 50)]:
        (rows, cols), vals = from_frame_box(img, fr, box)
        assert np.allclose(vals, whole[rows, cols], atol=1e-4) and np.array_equal(vals, back[rows, cols])
        # the slices hold exactly the native pixels whose frame coordinates fall in the box
        inb = (g[0] >= box[0] - 0.5) & (g[0] <= box[1] - 0.5) & (g[1] >= box[2] - 0.5) & (g[1] <= box[3] - 0.5)
        sel = np.zeros(native, bool)
        sel[rows, cols] = True
        assert np.array_equal(sel, inb), box
    if fr.origin[0] + step[0] * 10 < -1:  # a box of frame rows above the scan reaches no native pixel
        rows, _ = native_box(fr, (0, 10, 0, size))
        assert rows.stop - rows.start == 0
