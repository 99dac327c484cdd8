"""Reader studies: design from real and synthetic cases, the blinded reading view driven by key
presses under Xvfb, answers that survive a killed process, two readers at once, a locked
database, hand-edited study files, and the report."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cmrstudio.errors import CmrError
from tests.helpers import cli, run


def _renders_project(folder: Path, specs):
    """A studio project with one kept render per (seed, vendor, phase): phantom-based, no model needed."""
    from cmrstudio.project import Project
    from tests.test_export import _render

    p = Project.create(folder)
    for seed, vendor, phase in specs:
        res, aff, c = _render(seed, vendor=vendor)
        p.add(res, {"case_id": c.case_id, "slice": 1, "phase": phase}, affine=aff)
    return p


@pytest.fixture
def sources(tmp_path):
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.io import write_case

    real = tmp_path / "real"
    for seed, vendor, phase in [(1, "siemens", "ED"), (2, "philips", "ED"), (3, "siemens", "ES")]:
        write_case(phantom_case(seed, n_slices=3, shape=(96, 96), vendor=vendor, phase=phase), real)
    proj = _renders_project(tmp_path / "project", [(40, "siemens", "ED"), (41, "siemens", "ED"), (42, "philips", "ED"),
                                                   (43, "siemens", "ES"), (44, "canon", "ED")])
    return real, proj.folder


def test_study_design_is_balanced_stratified_blinded_and_seeded(sources, tmp_path):
    from cmrstudio.study.design import create_study, load_study

    real, syn = sources
    st = create_study([real], [syn], tmp_path / "study", n=4, seed=7, mode="both")
    kinds = [it.kind for it in st.items]
    assert kinds.count("real") == 4 and kinds.count("synthetic") == 4 and len(st.pairs) == 4
    # matched strata first: siemens/ED and philips/ED and siemens/ES exist in both kinds
    strata = lambda k: sorted((it.vendor, it.phase) for it in st.items if it.kind == k)  # noqa: E731
    # matched stratum by stratum; the canon render has no real match, so it is left out
    assert strata("real") == strata("synthetic") == [("philips", "ED"), ("siemens", "ED"), ("siemens", "ED"), ("siemens", "ES")]
    for p in st.pairs:
        l, r = st.item(p.left), st.item(p.right)
        assert {l.kind, r.kind} == {"real", "synthetic"} and (l if p.real_side == "left" else r).kind == "real"
    for iid, img in st.images.items():
        assert img.shape == (128, 128) and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
        assert np.percentile(img, 99.5) > 0.9  # the same normalisation for both kinds
    # ids and images say nothing of the kind; orders are per reader, stable, and differ between readers
    assert [it.id for it in st.items] == sorted(it.id for it in st.items) and kinds != sorted(kinds)
    assert st.order("dr a") == load_study(st.folder).order("dr a") != st.order("dr b")
    again = create_study([real], [syn], tmp_path / "again", n=4, seed=7, mode="both")
    assert [(i.kind, i.source) for i in again.items] == [(i.kind, i.source) for i in st.items]
    assert sorted(p.real_side for p in st.pairs) == ["left", "left", "right", "right"]  # the real image on each side equally
    # by default only matched strata: the canon render (no canon real scan) never enters, even with n unset
    full = create_study([real], [syn], tmp_path / "full", seed=7)
    assert "canon" not in {it.vendor for it in full.items}
    filled = create_study([real], [syn], tmp_path / "filled", seed=7, fill=True)
    assert "canon" in {it.vendor for it in filled.items}
    # both kinds went through the same resampling: their smoothness (mean absolute neighbour difference) is alike
    rough = lambda k: np.mean([np.abs(np.diff(st.images[i.id], axis=1)).mean() for i in st.items if i.kind == k])  # noqa: E731
    assert 0.5 < rough("real") / rough("synthetic") < 2.0


def test_no_patient_is_shown_as_both_real_and_synthetic(sources, tmp_path):
    from cmrstudio.study.design import create_study

    real, syn = sources
    # masks of the real patients 1 and 2, and of another patient (50) in patient 3's stratum
    _renders_project(tmp_path / "same", [(1, "siemens", "ED"), (2, "philips", "ED"), (50, "siemens", "ES")])
    st = create_study([real], [tmp_path / "same"], tmp_path / "s")
    reals = {it.source["case"] for it in st.items if it.kind == "real"}
    assert reals == {"phantom_0003_ES"}
    doc = json.loads((st.folder / "study.json").read_text(encoding="utf-8"))
    assert doc["selection"]["excluded_real_slices_same_patient"] == 6


def test_hand_edited_or_damaged_studies_get_one_sentence(sources, tmp_path):
    from cmrstudio.study.design import create_study, load_study

    real, syn = sources
    with pytest.raises(CmrError, match="needs real and synthetic"):
        create_study([real], [], tmp_path / "s0")
    with pytest.raises(CmrError, match="No real heart slice"):
        create_study([syn], [syn], tmp_path / "s1")  # a project holds no real scans
    st = create_study([real], [syn], tmp_path / "s", n=3)
    with pytest.raises(CmrError, match="already holds a study"):
        create_study([real], [syn], tmp_path / "s")
    path = st.folder / "study.json"
    good = path.read_text(encoding="utf-8")
    doc = json.loads(good)
    doc["pairs"][0]["real_side"] = "right" if doc["pairs"][0]["real_side"] == "left" else "left"
    path.write_text(json.dumps(doc))
    with pytest.raises(CmrError, match=r"study.json is inconsistent: its items, truths, pairs, seed or mode were changed"):
        load_study(st.folder)
    doc = json.loads(good)
    doc["items"][0]["kind"] = "synthetic" if doc["items"][0]["kind"] == "real" else "real"
    path.write_text(json.dumps(doc))
    with pytest.raises(CmrError, match="inconsistent: its items, truths, pairs, seed or mode were changed"):
        load_study(st.folder)
    doc = json.loads(good)
    doc["seed"] = doc["seed"] + 1  # would silently reorder a resuming reader's cases
    path.write_text(json.dumps(doc))
    with pytest.raises(CmrError, match="were changed after it was created"):
        load_study(st.folder)
    doc = json.loads(good)
    doc["pairs"][1]["id"] = doc["pairs"][0]["id"]
    path.write_text(json.dumps(doc))
    with pytest.raises(CmrError, match="two pairs share an id"):
        load_study(st.folder)
    path.write_text(good)
    np.savez(st.folder / "images.npz", **{k: v * 0 for k, v in st.images.items()})
    with pytest.raises(CmrError, match="images.npz is not the file the study was created with"):
        load_study(st.folder)


def test_answers_are_committed_at_once_and_survive_a_killed_process(sources, tmp_path):
    from cmrstudio.study.design import create_study, load_study
    from cmrstudio.study.store import Store

    real, syn = sources
    st = create_study([real], [syn], tmp_path / "s", n=3, mode="single")
    order = st.order("kim")
    script = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from cmrstudio.study.design import load_study
from cmrstudio.study.store import Store
st = load_study({str(st.folder)!r})
s = Store(st)
s.start("kim")
for mode, key in {order[:2]!r}:
    s.answer("kim", mode, key, "real", 3, 1.5)
os.kill(os.getpid(), 9)  # no close, no cleanup
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    assert p.returncode == -9, p.stderr
    s = Store(load_study(st.folder))
    with pytest.raises(CmrError, match="'kim' is already taken in this study \\(2 answers\\); to continue as 'kim' use --resume"):
        s.start(" kim ")  # the same name, whatever the spaces
    assert s.start(" kim", resume=True) == set(order[:2])  # the killed session's lock does not count
    other = Store(load_study(st.folder))
    with pytest.raises(CmrError, match="'kim' is already reading this study in another window"):
        other.start("kim", resume=True)
    with pytest.raises(CmrError, match="starts with 'machine'"):
        other.start("Machine Reader")
    s.end()
    assert other.start("kim", resume=True) == set(order[:2])
    other.close()
    with pytest.raises(CmrError, match="already answered"):
        s.answer("kim", *order[0], "synthetic", 5, 1.0)
    s.close()


def test_two_readers_at_once_and_a_locked_database(sources, tmp_path):
    from cmrstudio.study.design import create_study
    from cmrstudio.study.store import Store

    real, syn = sources
    st = create_study([real], [syn], tmp_path / "s", n=3, mode="single")
    a, b = Store(st), Store(st)  # two windows
    a.start("ann")
    b.start("bob")
    for (m1, k1), (m2, k2) in zip(st.order("ann"), st.order("bob")):
        a.answer("ann", m1, k1, "real", 2, 1.0)
        b.answer("bob", m2, k2, "synthetic", 4, 2.0)
    assert len(a.rows()) == 2 * len(st.items)
    # another program holds the database with an exclusive lock for a while
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, time, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); c.execute('BEGIN EXCLUSIVE'); "
        "print('locked', flush=True); time.sleep(4); c.execute('ROLLBACK')"), str(st.folder / "answers.sqlite")],
        stdout=subprocess.PIPE, text=True, encoding="utf-8", errors="replace")
    assert holder.stdout.readline().strip() == "locked"
    c = a
    c.conn.execute("PRAGMA busy_timeout = 300")  # give up after 0.3 s instead of 5
    with pytest.raises(CmrError, match="is locked by another program .* no answer was lost"):
        c.start("cy")
    holder.wait(timeout=30)
    assert "cy" not in c.readers() and len(c.rows()) == 2 * len(st.items)
    c.start("cy")
    a.close()
    b.close()


@pytest.mark.gui
def test_reading_view_keys_pause_resume_and_report(sources, tmp_path, qtbot):
    from qtpy.QtCore import Qt

    from cmrstudio.gui.reader import ReadingWindow
    from cmrstudio.study.design import create_study
    from cmrstudio.study.store import Store

    real, syn = sources
    st = create_study([real], [syn], tmp_path / "s", n=3, mode="both", free_text=True)
    total = len(st.items) + len(st.pairs)
    win = ReadingWindow(st, Store(st), "reader one")
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    assert win.status.text().startswith(f"1 / {total}") and "Is this image real or synthetic?" in win.status.text()
    # nothing identifying on screen: the title is the study's name, no file or case names anywhere
    shown_text = win.windowTitle() + win.status.text() + win.hint.text()
    assert not any(str(it.source.get("case", "@@")) in shown_text or str(it.source.get("render", "@@")) in shown_text for it in st.items)
    first = win.current
    qtbot.keyClick(win, Qt.Key_R)
    assert "you said: real" in win.status.text()
    qtbot.keyClick(win, Qt.Key_Backspace)
    qtbot.keyClick(win, Qt.Key_S)
    qtbot.keyClick(win, Qt.Key_P)  # pause: the image is hidden and the clock stops
    assert "Paused" in win.status.text() and win.left.pixmap().isNull()
    time.sleep(0.6)
    qtbot.keyClick(win, Qt.Key_P)
    assert win.note.isVisible()
    win.note.setText("wall texture too smooth")  # the optional comment of the question set
    qtbot.keyClick(win, Qt.Key_4)
    rows = Store(st).rows()
    assert len(rows) == 1 and rows[0]["item"] == first[1] and rows[0]["answer"] == "synthetic" and rows[0]["confidence"] == 4
    assert rows[0]["free_text"] == "wall texture too smooth" and win.note.text() == ""
    assert rows[0]["seconds"] < 0.5  # the paused time is not reading time
    qtbot.keyClick(win, Qt.Key_R)
    qtbot.keyClick(win, Qt.Key_2)
    win.close()  # closed after 2 answers: they are saved

    with pytest.raises(CmrError, match="already taken"):
        ReadingWindow(st, Store(st), "reader one")
    win2 = ReadingWindow(st, Store(st), "reader one", resume=True)
    qtbot.addWidget(win2)
    win2.show()
    assert len(win2.todo) == total - 2 and win2.status.text().startswith(f"3 / {total}")
    while win2.current is not None:
        mode = win2.current[0]
        qtbot.keyClick(win2, Qt.Key_S if mode == "single" else Qt.Key_Left)
        qtbot.keyClick(win2, Qt.Key_3)
    assert "All" in win2.status.text() and len(Store(st).rows()) == total
    win2.close()

    # the report from the command line (the study's own answers, scored per reader and pooled)
    run("study", "report", str(st.folder), "--out", str(tmp_path / "rep"))
    html = (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    assert "reader one" in html and "<img" in html
    assert len((tmp_path / "rep" / "answers.csv").read_text(encoding="utf-8").strip().splitlines()) == total + 1


def test_cli_creates_a_study_and_reports_bad_input(sources, tmp_path):
    real, syn = sources
    p = run("study", "create", str(tmp_path / "s"), "--real", str(real), "--synthetic", str(syn), "--n", "2", "--seed", "3")
    assert "2 real + 2 synthetic slices, 2 2AFC pairs" in p.stdout
    p = cli("study", "create", str(tmp_path / "s"), "--real", str(real), "--synthetic", str(syn), check=False)
    assert p.returncode == 2 and "already holds a study" in p.stderr and p.stderr.count("\n") == 1
    p = cli("study", "report", str(tmp_path / "s"), check=False)
    assert p.returncode == 2 and "has no answers yet" in p.stderr
    p = cli("study", "create", str(tmp_path / "t"), "--real", str(real), "--synthetic", str(syn), "--mode", "triple", check=False)
    assert p.returncode == 2 and "--mode 'triple' is not known" in p.stderr


@pytest.mark.shared_data
def test_study_from_real_scans_and_spade_renders(mnms_dir, tmp_path):
    """Real M&Ms slices against the shipped SPADE model's renders of other M&Ms masks."""
    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.io import read_cases
    from cmrstudio.record import Render, make_record
    from cmrstudio.project import Project
    from cmrstudio.study.design import create_study

    every = [c for c in read_cases(mnms_dir) if c.mask is not None and c.image is not None]
    # two patients of each vendor, so that each vendor/phase stratum holds both kinds: real slices of one, renders of the other's masks
    by = lambda v: [c for c in every if c.vendor == v]  # noqa: E731
    cases = by("siemens")[:2] + by("philips")[:2] + by("siemens")[2:4] + by("philips")[2:4]
    r = open_renderer()
    proj = Project.create(tmp_path / "proj")
    for c in cases[4:]:
        frame = r.frame_for(c.mask, c.spacing)
        heart = [z for z in range(c.shape[0]) if (c.mask[z] > 0).sum() > 400]
        for z in heart[len(heart) // 2 - 1:len(heart) // 2 + 2]:  # 3 mid-ventricular slices a case: 12 renders for a 6-pair study
            img, framed = r.render_slice(c.mask[z], frame, c.vendor, seed=z)  # fully synthetic: the whole slice
            proj.add(Render(img, framed, c.mask[z], frame, make_record(r, z, c.vendor)), {"case_id": c.case_id, "slice": z, "phase": c.phase})
    real = tmp_path / "real"
    from cmrstudio.io import write_case

    for c in cases[:4]:
        write_case(c, real)
    st = create_study([real], [proj.folder], tmp_path / "study", n=6, seed=1)
    assert sum(it.kind == "real" for it in st.items) == 6 == sum(it.kind == "synthetic" for it in st.items)
    vendors = {it.vendor for it in st.items}
    assert vendors <= {"siemens", "philips", "ge", "canon", "unknown"} and len(st.pairs) == 6


def test_machine_reader_answers_the_study_and_is_reported_apart(sources, tmp_path):
    """A classifier trained on other cases (real phantoms against the shipped SPADE's renders of their masks)
    answers every question; the report scores it like a reader but keeps it out of the pooled human figures."""
    import torch

    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.io import write_case
    from cmrstudio.study.design import create_study, load_study
    from cmrstudio.study.machine_reader import READER, add_machine_reader
    from cmrstudio.study.stats import score_study
    from cmrstudio.study.store import Store, to_answers

    torch.set_num_threads(1)
    real, syn = sources
    st = create_study([real], [syn], tmp_path / "s", n=3, mode="both")
    train = tmp_path / "train"
    for seed in (21, 22, 23, 24):
        write_case(phantom_case(seed, n_slices=4, shape=(96, 96), vendor="siemens"), train)
    with pytest.raises(CmrError, match="which the study shows to its readers"):
        add_machine_reader(st.folder, [real], steps=5)
    msg = add_machine_reader(st.folder, [train], steps=40)
    assert "machine reader: 9 answers" in msg and "validation accuracy" in msg
    store = Store(load_study(st.folder))
    s = Store(st)
    s.start("dr who")
    for mode, key in st.order("dr who"):
        s.answer("dr who", mode, key, "real" if mode == "single" else "left", 3, 2.0)
    scores = score_study(to_answers(st, store.rows()))
    assert READER in scores["single"]["machine"] and READER not in scores["single"]["readers"]
    assert scores["single"]["pooled"]["n"] == len(st.items)  # the human alone
    add_machine_reader(st.folder, [train], steps=10)  # retrained: replaces, does not add
    assert sum(r["reader"] == READER for r in store.rows()) == len(st.items) + len(st.pairs)
    assert (st.folder / "machine" / "classifier.json").exists()
    with pytest.raises(CmrError, match="Only machine readers can be removed"):
        store.forget_reader("dr who")
    store.close()
    s.close()


@pytest.mark.gui
def test_the_studio_opens_a_study_for_reading(sources, tmp_path, make_napari_viewer, monkeypatch):
    from qtpy.QtCore import Qt

    from cmrstudio.gui.app import StudioWindow
    from cmrstudio.study.design import create_study
    from cmrstudio.study.store import Store

    monkeypatch.setenv("CMRSTUDIO_CONFIG", str(tmp_path / "settings.json"))
    monkeypatch.setenv("CMRSTUDIO_PROJECT", str(tmp_path / "studio-project"))
    real, syn = sources
    st = create_study([real], [syn], tmp_path / "s", n=2, mode="single")
    win = StudioWindow(viewer=make_napari_viewer(show=True))
    try:
        assert "Read a study (blinded)…" in [a.text() for a in win.studio_menu.actions()]
        rw = win.read_study_dialog(str(st.folder), reader="R1")
        assert rw is not None and rw.isVisible() and rw.windowTitle() == "s — reader study"
        from qtpy.QtTest import QTest

        QTest.keyClick(rw, Qt.Key_S)
        QTest.keyClick(rw, Qt.Key_5)
        assert len(Store(st).rows()) == 1
        rw.close()
        # the name is taken: declining "Continue as R1?" gives a message and no window, accepting resumes
        assert win.read_study_dialog(str(st.folder), reader="R1", resume=False) is None
        assert "already taken" in win.synthesis.message.text()
        again = win.read_study_dialog(str(st.folder), reader="R1", resume=True)
        assert again is not None and again.isVisible()
        QTest.keyClick(again, Qt.Key_R)
        QTest.keyClick(again, Qt.Key_4)
        rows = Store(st).rows()
        assert len(rows) == 2 and len({r["item"] for r in rows}) == 2  # the second answer is for the other image
        again.close()
    finally:
        win.studio.close()
