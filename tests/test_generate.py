"""``cmrstudio generate``: recipe checks, the plan, a real local run through the nnU-Net exporter, determinism,
a 2-worker Ray run equal to the local one, and resume after a kill (issue 20).

Rendering uses the shipped spade-cmr on small phantom volumes (2 slices a case) to keep the module near a minute.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from cmrstudio.errors import CmrError
from cmrstudio.generate.recipe import load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]


def write_recipe(folder: Path, name: str = "recipe.yaml", **over) -> Path:
    recipe = {
        "cases": 4, "seed": 123, "shard_size": 2,
        "anatomy": [{"kind": "parametric", "weight": 3, "slices": 2, "lv_diameter_mm": {"dist": "normal", "mean": 55, "sd": 8},
                     "wall_thickness_mm": {"dist": "uniform", "low": 6, "high": 13}},
                    {"kind": "masks", "weight": 2, "path": "masks/*.nii.gz", "labels": "canonical", "max_slices": 2,
                     "augment": {"rotate_deg": 15, "scale": 0.1, "elastic_mm": 2}}],
        "vendors": {"siemens": 1, "philips": 1},
        "models": ["spade-cmr"],
        "output": {"format": "nnunet", "name": "GenTest", "dataset_id": 742},
    }
    recipe.update(over)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A recipe folder with two real-looking mask files (phantom label maps written as NIfTI)."""
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.io.nifti import write_nifti

    d = tmp_path_factory.mktemp("gen")
    (d / "masks").mkdir()
    for s in (1, 2):
        c = phantom_case(seed=s, n_slices=4, vendor="siemens")
        write_nifti(d / "masks" / f"patient{s:03d}_gt.nii.gz", c.mask, c.affine, dtype=np.uint8)
    write_recipe(d)
    return d


def nifti_arrays(root: Path) -> dict[str, np.ndarray]:
    import nibabel as nib

    return {str(p.relative_to(root)): np.asarray(nib.load(str(p)).dataobj) for p in sorted(root.rglob("*.nii.gz"))}


def dataset_arrays(out: Path) -> dict[str, np.ndarray]:
    return nifti_arrays(out / "dataset" / "Dataset742_GenTest")


# -- the recipe --------------------------------------------------------------------------------------

@pytest.mark.parametrize("data, words", [
    ({"cases": 3, "anatomy": [{"kind": "parametric", "lv_diametre_mm": 50}]}, ["anatomy[0].lv_diametre_mm", "not known"]),
    ({"cases": 3, "anatomy": [{"kind": "parametric", "lv_diameter_mm": {"dist": "gauss", "mean": 50}}]},
     ["anatomy[0].lv_diameter_mm.dist", "'gauss'", "normal"]),
    ({"cases": 3, "anatomy": [{"kind": "parametric", "lv_diameter_mm": {"dist": "normal", "mean": 50}}]}, ["lv_diameter_mm.sd", "missing"]),
    ({"cases": 3, "anatomy": [{"kind": "parametric", "wall_thickness_mm": {"dist": "uniform", "low": 9, "high": 4}}]},
     ["anatomy[0].wall_thickness_mm", "high 4 is below low 9"]),
    ({"cases": 0}, ["'cases' = 0", "greater than or equal to 1"]),
    ({"cases": 2, "vendors": ["siemens", "toshiba"]}, ["'vendors'", "toshiba"]),
    ({"cases": 2, "output": {"format": "png"}}, ["output.format", "png"]),
    ({"cases": 2, "anatomy": [{"kind": "atlas"}]}, ["anatomy[0].kind", "'atlas'", "parametric"]),
    ([1, 2], ["not a mapping"]),
])
def test_bad_recipe_is_one_sentence_naming_the_field(data, words):
    with pytest.raises(CmrError) as exc:
        parse_recipe(data, "The recipe r.yaml")
    msg = exc.value.message
    assert "\n" not in msg and msg.startswith("The recipe r.yaml")
    for w in words:
        assert w in msg, msg


def test_recipe_sources_and_models_are_checked_before_anything_runs(tmp_path):
    from cmrstudio.generate.run import load_plan

    missing = write_recipe(tmp_path, "missing.yaml", anatomy=[{"kind": "masks", "path": "no_such_folder"}])
    with pytest.raises(CmrError, match=r"anatomy\[0\]\.path 'no_such_folder'.*does not exist"):
        load_plan(missing)
    (tmp_path / "empty").mkdir()
    empty = write_recipe(tmp_path, "empty.yaml", anatomy=[{"kind": "masks", "path": "empty"}])
    with pytest.raises(CmrError, match=r"anatomy\[0\]\.path 'empty'.*holds no mask file"):
        load_plan(empty)
    nomatch = write_recipe(tmp_path, "glob.yaml", anatomy=[{"kind": "masks", "path": "empty/*.nii.gz"}])
    with pytest.raises(CmrError, match="matches no file"):
        load_plan(nomatch)
    model = write_recipe(tmp_path, "model.yaml", anatomy=[{"kind": "parametric"}], models=["spade-cmr", "no-such-model"])
    with pytest.raises(CmrError, match=r"models\[1\]\.name 'no-such-model'"):
        load_plan(model)
    steps = write_recipe(tmp_path, "steps.yaml", anatomy=[{"kind": "parametric"}], models=[{"name": "spade-cmr", "steps": 4}])
    with pytest.raises(CmrError, match=r"models\[0\]\.steps is 4.*one-step"):
        load_plan(steps)
    broken = tmp_path / "broken.yaml"
    broken.write_text("cases: 3\nanatomy: [\n")
    with pytest.raises(CmrError, match="not valid YAML at line"):
        load_recipe(broken)
    with pytest.raises(CmrError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_plan_is_deterministic_and_per_case(workdir):
    from cmrstudio.generate.plan import build_anatomy, make_plan

    recipe, base = load_recipe(workdir / "recipe.yaml")
    a, b = make_plan(recipe, base), make_plan(recipe, base)
    assert a.cases == b.cases and a.sha256 == b.sha256
    assert [len(s) for s in a.shards] == [2, 2]
    assert {c["anatomy"]["kind"] for c in a.cases} == {"parametric", "masks"}  # this seed draws both sources
    assert len({c["seed"] for c in a.cases}) == 4
    # a case's spec does not depend on how many cases there are (its seed is (recipe seed, index))
    more = make_plan(recipe.model_copy(update={"cases": 9}), base)
    assert more.cases[:4] == a.cases
    # a different seed changes the cases
    other = make_plan(recipe.model_copy(update={"seed": 124}), base)
    assert other.cases != a.cases
    # augmentation: deterministic from the spec, labels stay canonical, the mask really moved
    spec = next(c for c in a.cases if c["anatomy"]["kind"] == "masks")
    m1, m2 = build_anatomy(spec), build_anatomy(spec)
    assert np.array_equal(m1.mask, m2.mask) and m1.mask.shape[0] == 2
    assert set(np.unique(m1.mask)) <= {0, 1, 2, 3} and set(np.unique(m1.mask)) >= {1, 2, 3}
    from cmrstudio.io import read_mask

    orig = read_mask(spec["anatomy"]["file"], labels="canonical").mask[1:3]
    assert (m1.mask != orig).mean() > 0.005
    assert m1.mask_origin == "patient"  # an augmented segmentation read from a file is a patient's, for the export


# -- real runs -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clean_run(workdir):
    """A local (in-process, 1 worker) run of the recipe: the reference every other run is compared with."""
    from cmrstudio.generate.run import generate

    out = workdir / "clean"
    rep = generate(workdir / "recipe.yaml", out, progress=False)
    return out, rep


@pytest.mark.slow
def test_local_generate_writes_an_nnunet_dataset_with_provenance(workdir, clean_run):
    import nibabel as nib
    import SimpleITK as sitk

    from cmrstudio.export import verify
    from cmrstudio.export.writers import check_nnunet_dataset_json
    from cmrstudio.generate.plan import build_anatomy
    from cmrstudio.generate.run import load_plan

    out, rep = clean_run
    assert rep.cases == 4 and rep.slices == 8 and rep.shards_rendered == 2 and rep.shards_skipped == 0
    root = out / "dataset" / "Dataset742_GenTest"
    ds = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    assert ds["numTraining"] == 4 and ds["labels"] == {"background": 0, "LV": 1, "MYO": 2, "RV": 3}
    assert check_nnunet_dataset_json(ds, root) == []
    assert verify(out / "dataset") == []  # every file, generation.json included, matches the manifest
    plan = load_plan(workdir / "recipe.yaml")
    for spec in plan.cases:
        cid = spec["id"]
        img_path, lab_path = root / "imagesTr" / f"{cid}_0000.nii.gz", root / "labelsTr" / f"{cid}.nii.gz"
        img = sitk.GetArrayFromImage(sitk.ReadImage(str(img_path)))  # (Z, Y, X)
        lab = np.asarray(nib.load(str(lab_path)).dataobj)  # (X, Y, Z)... as written: compare through SimpleITK too
        lab_sitk = sitk.GetArrayFromImage(sitk.ReadImage(str(lab_path)))
        want = build_anatomy(spec).mask
        assert img.shape == want.shape and lab_sitk.shape == want.shape and lab.size == want.size
        assert np.array_equal(lab_sitk, want), cid  # the label is exactly the mask that was rendered
        assert np.isfinite(img).all() and img.std() > 0.01
        # the heart is where the label says: the rendered blood pool is brighter than the myocardium (bSSFP)
        assert img[want == 1].mean() > img[want == 2].mean(), cid
    gen = json.loads((out / "dataset" / "generation.json").read_text(encoding="utf-8"))
    assert gen["recipe_sha256"] == plan.recipe_sha256 and gen["plan_sha256"] == plan.sha256
    assert gen["models"]["spade-cmr"]["sha256"] and len(gen["cases"]) == 4
    assert all("file" not in c["anatomy"] for c in gen["cases"])  # mask files are named by sha256 only
    prov = json.loads((root / "provenance.json").read_text(encoding="utf-8"))
    for spec in plan.cases:
        p = prov[spec["id"]]
        assert p["model"] == "spade-cmr" and p["seed"] == spec["seed"] and p["vendor"] == spec["vendor"]
        assert p["model_sha256"] == gen["models"]["spade-cmr"]["sha256"]
        # a phantom's mask is synthetic; an augmented real segmentation makes the case derived from a patient
        assert p["derived_from_patient"] is (spec["anatomy"]["kind"] == "masks"), spec["id"]
    listing = json.loads((out / "dataset" / "export.json").read_text(encoding="utf-8"))
    assert sorted(listing["derived_from_patient"]) == sorted(c["id"] for c in plan.cases if c["anatomy"]["kind"] == "masks")
    assert "patient001" not in (out / "dataset" / "generation.json").read_text(encoding="utf-8")  # no source file name leaks
    try:
        from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    except ImportError:
        return
    verify_dataset_integrity(str(root), num_processes=1)  # raises on any problem


@pytest.mark.slow
def test_same_recipe_gives_identical_images(workdir, clean_run):
    from cmrstudio.generate.run import generate

    out = workdir / "again"
    rep = generate(workdir / "recipe.yaml", out, progress=False, stop_after=1)  # the first shard only
    assert rep.dataset is None and rep.shards_rendered == 1
    a = nifti_arrays(clean_run[0] / "shards" / "shard-0000")
    b = nifti_arrays(out / "shards" / "shard-0000")
    assert sorted(a) == sorted(b) and len(a) == 4
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


@pytest.mark.slow
def test_ray_two_workers_equal_one_local_worker(workdir, clean_run):
    ray = pytest.importorskip("ray")
    from cmrstudio.generate.run import generate

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rep = generate(workdir / "recipe.yaml", workdir / "ray", use_ray=True, workers=2, progress=False)
    finally:
        ray.shutdown()
    assert rep.where.startswith("ray (2 actors")
    a, b = dataset_arrays(clean_run[0]), dataset_arrays(workdir / "ray")
    assert sorted(a) == sorted(b) and len(a) == 8
    for k in a:
        assert np.array_equal(a[k], b[k]), k


@pytest.mark.slow
def test_resume_after_kill_keeps_finished_shards(workdir, clean_run):
    out = workdir / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "cmrstudio", "generate", str(workdir / "recipe.yaml"), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = out / "shards" / "shard-0000" / "shard.json"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert first.exists(), proc.stderr.read().decode()[-2000:]
    assert not (out / "shards" / "shard-0001" / "shard.json").exists(), "the kill came after the last shard; nothing to resume"
    assert not (out / "dataset").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "shards" / "shard-0000").iterdir()}

    # a different recipe may not resume into this folder
    other = write_recipe(workdir, "other.yaml", seed=999)
    res = subprocess.run([sys.executable, "-m", "cmrstudio", "generate", str(other), "--out", str(out), "--quiet"],
                         cwd=ROOT, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    assert res.returncode == 2 and "was made by a different recipe" in res.stderr and "Traceback" not in res.stderr

    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "1 shard already finished was kept" in res.stdout and "1 rendered now" in res.stdout, res.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards" / "shard-0000").iterdir()} == kept  # not rewritten
    assert not list((out / "shards").glob(".shard-*"))  # the killed run's partial shard was tidied
    a, b = dataset_arrays(clean_run[0]), dataset_arrays(out)
    assert sorted(a) == sorted(b) and len(a) == 8
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_cli_dry_run_prints_the_plan(workdir, capsys):
    from cmrstudio.cli import main

    main(["generate", str(workdir / "recipe.yaml"), "--dry-run"])
    text = capsys.readouterr().out
    assert "4 cases in 2 shards of 2" in text and "spade-cmr 4" in text and "Dataset742_GenTest" in text
    with pytest.raises(SystemExit) as exc:
        main(["generate", str(workdir / "recipe.yaml")])
    assert exc.value.code == 2
    assert "Give --out DIR" in capsys.readouterr().err


def make_project(folder: Path) -> Path:
    """A studio project keeping two renders: a painted phantom slice (rated 4) and one rated 1."""
    from cmrstudio.case import Case
    from cmrstudio.data.frame import make_frame
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.project import Project
    from cmrstudio.record import Render, RenderRecord

    p = Project.create(folder / "proj")
    for seed, rating in ((5, 4), (6, 1)):
        c = phantom_case(seed=seed, n_slices=3, vendor="ge")
        m = c.mask[1]
        frame = make_frame(Case(None, m[None], c.affine), size=128, spacing_mm=1.25)
        rec = RenderRecord(model="spade-cmr", kind="spade", seed=seed, vendor="ge")
        p.add(Render(np.zeros(m.shape, np.float32), None, m, frame, rec), source={"dataset": "phantom", "case_id": c.case_id},
              rating=rating, affine=c.affine)
    return folder / "proj"


def test_project_source_draws_kept_renders_by_rating(tmp_path):
    from cmrstudio.generate.plan import build_anatomy, make_plan
    from cmrstudio.project import Project

    proj = make_project(tmp_path)
    path = write_recipe(tmp_path, "proj.yaml", cases=5, anatomy=[{"kind": "project", "path": "proj", "min_rating": 3,
                                                                   "augment": {"rotate_deg": 20}}])
    recipe, base = load_recipe(path)
    plan = make_plan(recipe, base)
    kept = [it.id for it in Project.open(proj).items if it.rating >= 3]
    assert len(kept) == 1 and {c["anatomy"]["item"] for c in plan.cases} == set(kept)
    a = build_anatomy(plan.cases[0])
    assert a.mask.shape[0] == 1 and set(np.unique(a.mask)) >= {1, 2, 3}
    assert a.mask_origin == "synthetic"  # the project's render was painted on a phantom: no patient's segmentation
    assert np.array_equal(a.mask, build_anatomy(plan.cases[0]).mask)
    high = write_recipe(tmp_path, "high.yaml", anatomy=[{"kind": "project", "path": "proj", "min_rating": 5}])
    with pytest.raises(CmrError, match=r"anatomy\[0\]\.path 'proj'.*keeps no render rated 5 or more"):
        make_plan(*load_recipe(high))
    nope = write_recipe(tmp_path, "nope.yaml", anatomy=[{"kind": "project", "path": "masks"}])
    with pytest.raises(CmrError, match=r"anatomy\[0\]\.path 'masks'.*not a cmrstudio project"):
        make_plan(*load_recipe(nope))


def test_one_run_at_a_time_and_workers_need_ray(workdir, tmp_path):
    from cmrstudio.generate.run import _lock, generate

    recipe = workdir / "recipe.yaml"
    with pytest.raises(CmrError, match="--workers 2 needs --ray"):
        generate(recipe, tmp_path / "w", workers=2, progress=False)
    assert not (tmp_path / "w").exists()
    out = tmp_path / "busy"
    out.mkdir()
    (out / "stray.txt").write_text("x")
    with pytest.raises(CmrError, match="is not a cmrstudio generate folder"):
        generate(recipe, out, progress=False)
    (out / "stray.txt").unlink()
    from cmrstudio.generate.run import load_plan, prepare_out

    prepare_out(out, load_plan(recipe), recipe)
    held = _lock(out)
    try:
        with pytest.raises(CmrError, match="Another cmrstudio generate is running in"):
            generate(recipe, out, progress=False)
    finally:
        held.close()
