"""The studio window, driven for real under Xvfb (pytest-xvfb starts it)."""

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui


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
