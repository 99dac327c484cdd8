import json

import numpy as np

from cmrstudio.io import scan

from helpers import cli, run




def test_phantom_writes_pairs_the_readers_load_back(tmp_path):
    out = tmp_path / "ph"
    p = run("phantom", "--n", "8", "--out", str(out), "--slices", "4", "--size", "96")
    assert "wrote 16" in p.stdout
    refs = scan(out)
    assert len(refs) == 16 and {r.phase for r in refs} == {"ED", "ES"}
    assert len(list(out.glob("*_image.nii.gz"))) == 16 and len(list(out.glob("*_mask.nii.gz"))) == 16
    c = refs[0].load()
    assert c.image.shape == (4, 96, 96) and set(np.unique(c.mask)) == {0, 1, 2, 3}
    assert c.spacing == (8.0, 1.5, 1.5)


def test_info_on_folder_file_and_json(tmp_path):
    run("phantom", "--n", "1", "--out", str(tmp_path), "--slices", "3", "--size", "80", "--vendor", "philips")
    p = run("info", str(tmp_path))
    assert "2 case(s), layout cmrstudio" in p.stdout and "philips" in p.stdout and "1.5 mm" in p.stdout
    j = json.loads(run("info", str(tmp_path), "--json").stdout)
    assert {c["phase"] for c in j["cases"]} == {"ED", "ES"} and j["cases"][0]["shape"] == [3, 80, 80]
    f = run("info", str(next(tmp_path.glob("*ED_image.nii.gz"))), "--mask", str(next(tmp_path.glob("*ED_mask.nii.gz"))))
    assert "image+mask" in f.stdout and "LV" in f.stdout


def test_info_on_shared_data_lists_cases_phases_vendors(mnms_dir, sunnybrook_dir):
    p = run("info", str(mnms_dir))
    assert "12 case(s)" in p.stdout and "canon" in p.stdout and "philips" in p.stdout and "mask only" in p.stdout
    s = run("info", str(sunnybrook_dir), "--check")
    assert "10 case(s), layout sunnybrook" in s.stdout and "ring is open" in s.stdout


def test_bad_input_is_one_sentence_without_traceback(tmp_path):
    p = cli("info", str(tmp_path / "missing.nii.gz"), check=False)
    assert p.returncode == 2 and "does not exist" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    q = cli("info", str(tmp_path / "empty"), check=False)
    assert q.returncode == 2 and "no cases" in q.stderr and "Traceback" not in q.stderr


def test_convert_and_check(tmp_path, acdc_dir):
    out = tmp_path / "conv"
    run("convert", str(acdc_dir), "--case", "patient001", "--out", str(out), "--spacing", "10,1.5,1.5")
    refs = scan(out)
    assert [r.phase for r in refs] == ["ED", "ES"]
    c = refs[0].load()
    assert c.spacing == (10.0, 1.5, 1.5) and c.source["origin"]["label_convention"] == "acdc"
    chk = run("check", str(out / "patient001_frame01_mask.nii.gz"))
    assert "[warning]" in chk.stdout or "no problems found" in chk.stdout
