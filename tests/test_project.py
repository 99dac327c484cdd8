"""The studio project: a gallery of kept renders in a folder."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cmrstudio.anatomy import COLOURS, LV, MYO, RV
from cmrstudio.data.frame import frame_mask, from_frame, make_frame, to_frame
from cmrstudio.data.phantom import phantom_case
from cmrstudio.record import Render, RenderRecord
from cmrstudio.errors import CmrError
from cmrstudio.project import PROJECT_FILE, GalleryItem, Project, default_project_dir


def _result(seed: int, z: int = 1, kind: str = "flow") -> Render:
    """A real render-shaped result: a phantom slice put through a real synthesis frame."""
    case = phantom_case(seed=seed, n_slices=3, shape=(90, 100))
    frame = make_frame(case, size=64, spacing_mm=2.5)
    framed = to_frame(case, frame).image[z]
    params = {"model": f"{kind}-test", "model_sha256": "ab" * 32, "kind": kind, "sampler": "euler", "steps": 5,
              "guidance": 1.5, "seed": seed, "vendor": case.vendor, "seconds": 0.25, "created": "2026-01-01T00:00:00+00:00"}
    return Render(from_frame(framed, frame, kind="image"), framed, case.mask[z].copy(), frame, RenderRecord.from_dict(params))


@pytest.fixture(scope="module")
def results():
    return [_result(1), _result(2, z=0), _result(3, kind="diffusion")]


@pytest.fixture
def proj(tmp_path, results):
    p = Project.create(tmp_path / "proj", name="Dilated LV study")
    for i, r in enumerate(results):
        p.add(r, source={"case_id": f"case{i}", "slice": i, "path": tmp_path / "scan.nii.gz"})
    return p


def test_round_trip_create_add_update_reopen(tmp_path, results):
    p = Project.create(tmp_path / "proj")
    assert p.name == "proj" and p.items == [] and (tmp_path / "proj" / PROJECT_FILE).is_file()
    a = p.add(results[0], source={"case_id": "phantom_0001", "slice": 1, "phase": "ED"}, note="nice septum", rating=4)
    b = p.add(results[1])  # a quick second add
    assert a.id != b.id and a.id == "r0001" and b.id == "r0002"
    assert (a.model, a.kind, a.seed, a.sampler, a.steps, a.guidance, a.seconds) == ("flow-test", "flow", 1, "euler", 5, 1.5, 0.25)
    assert a.vendor == results[0].params["vendor"] and a.created.endswith("+00:00")
    upd = p.update(b.id, note="too bright", rating=2)
    assert (upd.note, upd.rating) == ("too bright", 2)
    assert p.update(a.id, rating=5).note == "nice septum"  # the note is kept
    assert p.update(a.id, note="kept").rating == 5  # the rating is kept

    q = Project.open(tmp_path / "proj")
    assert q.name == "proj" and [it.to_dict() for it in q.items] == [it.to_dict() for it in p.items]
    assert [(it.note, it.rating) for it in q.items] == [("kept", 5), ("too bright", 2)]
    assert q.item(a.id).source == {"case_id": "phantom_0001", "slice": 1, "phase": "ED"}
    assert GalleryItem.from_dict(q.item(a.id).to_dict()) == q.item(a.id)
    assert Project.open(tmp_path / "proj" / PROJECT_FILE).items == q.items  # the file itself is accepted too

    # the render reads back: same pixels, mask, frame and parameters
    back = q.load(a.id)
    assert np.allclose(back.image, results[0].image, atol=1e-5) and np.array_equal(back.mask, results[0].mask)
    assert back.params == results[0].params and back.frame.to_dict() == results[0].frame.to_dict()
    files = q.render_files(a.id)
    assert set(files) == {"image", "mask", "json", "thumbnail"} and all(f.is_file() for f in files.values())
    assert files["thumbnail"] == q.thumbnail_path(a.id)
    assert json.loads(files["json"].read_text(encoding="utf-8"))["source"]["synthetic"] is True
    assert q.check() == []
    # clearing a rating is explicit
    assert q.update(a.id, rating=None).rating is None and Project.open(tmp_path / "proj").item(a.id).rating is None


def _colour(label):
    return tuple(int(round(c * 255)) for c in COLOURS[label][:3])


def test_thumbnails_are_pngs_with_the_outline_in_label_colours(proj, results):
    im = Image.open(proj.thumbnail_path("r0001"))
    assert im.format == "PNG" and im.mode == "RGB" and im.size == (128, 128)  # the framed render: square
    rgb = np.asarray(im)
    # where the framed mask lies in the thumbnail (nearest neighbour, 64 -> 128)
    lab = np.kron(frame_mask(results[0].mask, results[0].frame), np.ones((2, 2), np.uint8))
    for label in (LV, MYO, RV):
        painted = np.all(rgb == _colour(label), axis=2)
        region = lab == label
        assert painted.sum() > 20, label
        assert (painted & region).sum() >= 0.95 * painted.sum()  # drawn on the structure ...
        interior = ndimage.binary_erosion(region, iterations=2)
        assert not (painted & interior).any()  # ... at its outline, not filled in
    grey = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
    assert grey.mean() > 0.85 and rgb[grey].std() > 10  # the image itself is grey and not blank
    # a render read back has no framed image: the native one is used, with its own aspect ratio
    again = proj.add(proj.load("r0002"))
    im2 = Image.open(proj.thumbnail_path(again.id))
    assert im2.size == (128, 115)
    assert np.all(np.asarray(im2) == _colour(LV), axis=2).any()


def test_ids_are_distinct_never_reused_and_never_overwrite(proj, results, tmp_path):
    ids = [it.id for it in proj.items]
    assert len(set(ids)) == 3
    # a leftover file of a crashed add (not listed) is never overwritten: its id is skipped
    stray = proj.renders_dir / "r0004_image.nii.gz"
    stray.write_bytes(b"someone else's file")
    new = proj.add(results[0])
    assert new.id == "r0005" and stray.read_bytes() == b"someone else's file"
    # a removed id is not handed out again, even by a fresh Project object
    files = proj.render_files(new.id)
    proj.remove(new.id)
    assert not any(f.exists() for f in files.values())
    assert new.id not in [it.id for it in Project.open(proj.folder).items]
    assert Project.open(proj.folder).add(results[1]).id == "r0006"


def test_bad_rating_and_unknown_id(proj, results):
    before = proj.path.read_bytes()
    for bad in (0, 6, 2.5, True, "3"):
        with pytest.raises(CmrError, match=r"Rating .* 1 to 5"):
            proj.update("r0001", rating=bad)
        with pytest.raises(CmrError, match="Rating"):
            proj.add(results[0], rating=bad)
    assert proj.path.read_bytes() == before and len(proj.items) == 3
    assert not (proj.renders_dir / "r0004.json").exists()  # a refused add writes nothing
    for call in (proj.item, proj.load, proj.remove, proj.thumbnail_path, proj.render_files, lambda i: proj.update(i, note="x")):
        with pytest.raises(CmrError, match="no item 'r0999'"):
            call("r0999")
    assert proj.path.read_bytes() == before


def test_damaged_or_foreign_project_files_name_the_file(tmp_path, proj):
    path = proj.path
    with pytest.raises(CmrError, match="does not exist"):
        Project.open(tmp_path / "nowhere")
    good = path.read_text(encoding="utf-8")
    cases = {
        "{broken": "not valid JSON",
        json.dumps({"format": "something-else", "version": 1}): "not a cmrstudio project",
        json.dumps({"format": "cmrstudio-project", "version": 2, "items": []}): "version 2.*update cmrstudio",
        json.dumps({"format": "cmrstudio-project", "version": 1, "items": {}}): "not a list",
        json.dumps({"format": "cmrstudio-project", "version": 1, "items": [{"id": "../../etc", "created": "x", "model": "m",
                                                                           "kind": "flow", "vendor": "ge", "seed": 1}]}): "item 1",
        json.dumps({"format": "cmrstudio-project", "version": 1, "items": [{"id": "r0001"}]}): "lacks created",
    }
    for text, what in cases.items():
        path.write_text(text)
        with pytest.raises(CmrError, match=what) as exc:
            Project.open(proj.folder)
        assert str(path) in exc.value.message
    path.write_text(good)
    assert len(Project.open(proj.folder).items) == 3


def test_a_broken_item_is_named_and_the_others_still_load(proj):
    files = proj.render_files("r0002")
    files["image"].unlink()
    (proj.render_files("r0003")["mask"]).write_bytes(b"\x1f\x8b not really gzip")
    problems = proj.check()
    assert len(problems) == 2
    assert "r0002" in problems[0] and "r0002_image.nii.gz" in problems[0] and "missing" in problems[0]
    assert "r0003" in problems[1] and "r0003_mask.nii.gz" in problems[1]
    with pytest.raises(CmrError, match=r"r0002 is broken: .*r0002_image\.nii\.gz is missing"):
        proj.load("r0002")
    with pytest.raises(CmrError, match=r"r0003 cannot be read: .*r0003_mask\.nii\.gz"):
        proj.load("r0003")
    assert proj.load("r0001").image.shape == (90, 100)
    # a lost thumbnail is reported too, but the render itself still loads
    proj.thumbnail_path("r0001").unlink()
    assert any("r0001" in s and "thumbnail" in s for s in proj.check())
    # removing a broken item clears it
    proj.remove("r0002")
    assert not any("r0002" in s for s in proj.check())


def test_create_refuses_an_existing_project_or_a_non_empty_folder(tmp_path, proj):
    with pytest.raises(CmrError, match="already holds a cmrstudio project.*open it instead"):
        Project.create(proj.folder)
    assert len(Project.open(proj.folder).items) == 3  # untouched
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(CmrError, match="not empty"):
        Project.create(other)
    with pytest.raises(CmrError, match="not empty and holds no cmrstudio project"):
        Project.open_or_create(other)  # a foreign folder is neither opened nor taken over
    assert sorted(os.listdir(other)) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert Project.create(empty).items == []
    assert Project.open_or_create(proj.folder).items == proj.items
    fresh = Project.open_or_create(tmp_path / "a" / "b")
    assert fresh.path.is_file() and fresh.name == "b"


def test_an_interrupted_write_leaves_the_previous_project_file(proj, results, monkeypatch):
    before = proj.path.read_bytes()
    files_before = sorted(p.name for d in (proj.renders_dir, proj.thumbnails_dir) for p in d.iterdir())
    real_replace = os.replace

    def failing_replace(src, dst, *a, **kw):
        if os.path.basename(dst) == PROJECT_FILE:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(CmrError, match=r"project\.json.*No space left") as exc:
        proj.update("r0001", note="lost", rating=1)
    assert "unchanged" in exc.value.message
    assert proj.item("r0001").note == "" and proj.item("r0001").rating is None  # memory agrees with the disk
    with pytest.raises(CmrError, match="No space left"):
        proj.add(results[0], note="half")
    with pytest.raises(CmrError, match="No space left"):
        proj.remove("r0002")
    monkeypatch.setattr(os, "replace", real_replace)

    assert proj.path.read_bytes() == before
    assert len(proj.items) == 3 and proj.load("r0002").mask.shape == (90, 100)  # the failed remove deleted nothing
    files_after = sorted(p.name for d in (proj.renders_dir, proj.thumbnails_dir) for p in d.iterdir())
    assert files_after == files_before  # the failed add left no half item and no temporary files
    q = Project.open(proj.folder)
    assert [(it.id, it.note, it.rating) for it in q.items] == [(it.id, it.note, it.rating) for it in proj.items]
    assert q.check() == []
    # and everything works again afterwards
    assert proj.update("r0001", note="ok").note == "ok" and Project.open(proj.folder).item("r0001").note == "ok"


def test_default_project_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CMRSTUDIO_PROJECT", str(tmp_path / "mine"))
    assert default_project_dir() == tmp_path / "mine"
    monkeypatch.delenv("CMRSTUDIO_PROJECT")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_project_dir() == tmp_path / "xdg" / "cmrstudio" / "projects" / "default"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_project_dir() == tmp_path / "home" / ".local" / "share" / "cmrstudio" / "projects" / "default"
