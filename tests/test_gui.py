"""The studio window, driven for real under Xvfb (pytest-xvfb starts it)."""

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui


def test_studio_opens_on_the_sample_real_case(make_napari_viewer):
    from cmrstudio.anatomy import COLOURS, LV
    from cmrstudio.gui.app import load_case, show_case

    viewer = make_napari_viewer(show=True)
    case = load_case(None)
    show_case(viewer, case)
    names = [l.name for l in viewer.layers]
    assert names == ["SCD0000101_ED scan", "SCD0000101_ED mask"]
    labels = viewer.layers[1]
    assert np.array_equal(labels.data, case.mask)
    assert np.allclose(labels.colormap.map(np.array([LV]))[0][:3], COLOURS[LV][:3], atol=0.02)
    assert "SCD0000101_ED" in viewer.title and "ge" in viewer.title
    assert "1.37" in viewer.canvas.overlays["text"].text
    shot = viewer.screenshot(canvas_only=True)
    # the canvas shows the scan (grey) and the LV overlay (red-dominant pixels)
    red = (shot[..., 0].astype(int) - shot[..., 1].astype(int) > 60).sum()
    assert shot.std() > 10 and red > 50


def test_npe2_reader_and_sample_contributions(tmp_path):
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.gui.layers import napari_reader, sample_data
    from cmrstudio.io import write_case

    write_case(phantom_case(2, n_slices=3, shape=(64, 64)), tmp_path)
    reader = napari_reader(str(next(tmp_path.glob("*_image.nii.gz"))))
    assert reader is not None
    layers = reader(None)
    assert [k for _, _, k in layers] == ["image"]
    assert napari_reader(str(tmp_path / "nothing.txt")) is None
    sample = sample_data()
    assert [k for _, _, k in sample] == ["image", "labels"] and sample[1][0].max() == 2
