import numpy as np
import torch

from cmrstudio.anatomy import LV, MYO, RV, VENDORS, check_mask
from cmrstudio.data.dataset import Augment, SliceDataset, cases_from
from cmrstudio.data.phantom import phantom_case


def test_phantom_is_anatomical_varied_and_phase_aware():
    eds = [phantom_case(s, phase="ED", vendor="ge") for s in range(3)]
    ess = [phantom_case(s, phase="ES", vendor="ge") for s in range(3)]
    for ed, es in zip(eds, ess):
        assert [f for f in check_mask(ed.mask, ed.spacing) if f.severity == "warning"] == []
        assert (ed.mask == LV).sum() > 1.3 * (es.mask == LV).sum()  # systole empties the LV
        myo_ed, myo_es = (ed.mask == MYO).sum(), (es.mask == MYO).sum()
        assert abs(myo_ed - myo_es) / myo_ed < 0.25  # myocardium roughly conserved
        # apex smaller than base, RV fades towards the apex
        assert (ed.mask[-1] == LV).sum() < (ed.mask[0] == LV).sum()
        assert (ed.mask[-1] == RV).sum() < (ed.mask[0] == RV).sum()
        # bSSFP contrast: blood bright, myocardium dark
        assert ed.image[ed.mask == LV].mean() > 1.8 * ed.image[ed.mask == MYO].mean()
    assert len({int((c.mask == LV).sum()) for c in eds}) == 3  # seeds differ
    # Rician noise: background is positive, not zero-mean
    bg = eds[0].image[:, :4, :4]
    assert bg.min() >= 0 and bg.mean() > 0
    assert np.array_equal(phantom_case(1).mask, phantom_case(1).mask)  # deterministic


def test_vendor_styles_differ():
    a = phantom_case(0, vendor="siemens")
    b = phantom_case(0, vendor="philips")
    assert np.array_equal(a.mask, b.mask)
    assert abs(a.image[a.mask == MYO].mean() / a.image[a.mask == LV].mean() - b.image[b.mask == MYO].mean() / b.image[b.mask == LV].mean()) > 0.02


def test_slice_dataset_keeps_image_and_mask_aligned_under_augmentation():
    cases = [phantom_case(s, n_slices=4) for s in range(2)]
    ds = SliceDataset(cases, augment=Augment(rotate_deg=30, translate=0.1), seed=1)
    assert len(ds) == 8
    item = ds[3]
    assert item["image"].shape == (1, 128, 128) and item["mask"].shape == (128, 128)
    assert item["image"].min() >= -1 and item["image"].max() <= 1 and item["mask"].dtype == torch.int64
    assert VENDORS[int(item["vendor"])] == cases[0].vendor
    for i in range(len(ds)):
        it = ds[i]
        img, m = it["image"][0].numpy(), it["mask"].numpy()
        # after the same random affine, the LV is still the bright blood pool
        assert img[m == LV].mean() > img[m == MYO].mean() + 0.3
    # augmentation changes the geometry between draws of one sample
    assert not torch.equal(ds[0]["mask"], ds[0]["mask"])


def test_dataset_over_real_readers(acdc_dir, mnms_dir):
    cases = cases_from([mnms_dir, acdc_dir / "patient001_frame01.h5"])
    assert all(c.image is not None for c in cases)
    ds = SliceDataset(cases, augment=None)
    assert len(ds) > 40
    vendors = {VENDORS[v] for v in ds.vendors}
    assert {"siemens", "philips"} <= vendors
    lv_bright = [ds[i]["image"][0][ds[i]["mask"] == LV].mean() > ds[i]["image"][0][ds[i]["mask"] == MYO].mean() for i in range(len(ds)) if (ds[i]["mask"] == LV).sum() > 30 and (ds[i]["mask"] == MYO).sum() > 30]
    assert np.mean(lv_bright) > 0.9
