"""Kill tests: exports, the project gallery and reader-study answers, each killed with SIGKILL at seeded random
moments, in real processes. After every kill:

* export: DEST is absent or one complete export (every file matches its manifest, the cases it lists are all
  there), and with ``--overwrite`` the previous export is still whole in DEST until the new one replaces it;
  the next export tidies what the killed one left;
* gallery: every add, update and remove that returned is on disk, the one in flight either happened or did
  not (nothing between), every listed item has all its files and they read, and no file is left without an
  entry (after the project is opened again);
* answers: every answer whose ``answer()`` returned is in the database, nothing else but the one in flight.

A flipped byte anywhere in an export (its manifest included) is caught by ``export --verify``.

The processes: a warm Python (``python tests/test_kill.py --driver``) imports cmrstudio once and forks one child
per task; it kills the child after the asked delay (being its parent, no other process can take its pid) and says
whether it was killed or finished. The figures: ``python -m pytest tests/test_kill.py -q -s`` prints them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
KILLS = 24  # per target; seeded
FIGURES: dict = {}


# --------------------------------------------------------------------------------------------------- shared
def make_render(seed: int, z: int = 1, vendor: str = "siemens"):
    """A kept render as the studio makes one (a phantom slice through a real synthesis frame): no model needed."""
    from cmrstudio.data.frame import from_frame, make_frame, to_frame
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.record import Render, RenderRecord

    c = phantom_case(seed, n_slices=3, shape=(64, 56), spacing=2.0, vendor=vendor)
    frame = make_frame(c, size=48)
    framed = to_frame(c, frame).image[z]
    params = {"model": "spade-test", "model_sha256": "ab" * 32, "kind": "spade", "sampler": "spade", "steps": 1, "guidance": None,
              "seed": seed, "vendor": vendor, "seconds": 0.02, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    res = Render(from_frame(framed, frame, kind="image"), framed, c.mask[z], frame, RenderRecord.from_dict(params))
    aff = np.array(c.affine, float)
    aff[:3, 3] += aff[:3, 0] * z
    return res, aff, c


def ack(path: str, line: str) -> None:
    """One line, appended with a single write (it survives the writer's SIGKILL the moment it returns)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_acks(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [ln.split(" ") for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


# --------------------------------------------------------------------------------------------------- tasks (in the child)
RENDERS: list = []


def task_export(source: str, dest: str, fmt: str, acks: str) -> None:
    from cmrstudio.export import export

    export(source, dest, fmt=fmt, overwrite=True)
    ack(acks, "done")


def task_gallery(folder: str, acks: str, seed: int, ops: int = 400) -> None:
    from cmrstudio.project import Project

    rng = random.Random(seed)
    p = Project.open(folder)
    for _ in range(ops):
        roll = rng.random()
        if roll < 0.6 or not p.items:
            k = rng.randrange(len(RENDERS))
            res, aff = RENDERS[k]
            ack(acks, f"try add {k}")
            it = p.add(res, {"case_id": f"c{k}", "slice": 1}, note=f"n{k}", rating=rng.randint(1, 5), affine=aff)
            ack(acks, f"done add {it.id}")
        elif roll < 0.8:
            it = rng.choice(p.items)
            r = rng.randint(1, 5)
            ack(acks, f"try update {it.id} {r}")
            p.update(it.id, rating=r)
            ack(acks, f"done update {it.id} {r}")
        else:
            it = rng.choice(p.items)
            ack(acks, f"try remove {it.id}")
            p.remove(it.id)
            ack(acks, f"done remove {it.id}")


def task_answers(study: str, reader: str, acks: str) -> None:
    from cmrstudio.study.design import load_study
    from cmrstudio.study.store import ANSWERS, Store

    st = load_study(study)
    s = Store(st)
    done = s.start(reader, resume=True)
    for mode, key in st.order(reader):
        if (mode, key) in done:
            continue
        answer = ANSWERS[mode][len(key) % 2]
        ack(acks, f"try {reader} {mode} {key}")
        s.answer(reader, mode, key, answer, 3, 0.5)
        ack(acks, f"done {reader} {mode} {key}")
    s.close()


def task_export_dies_at(source: str, dest: str, point: str, acks: str) -> None:
    """An export that kills itself at one chosen moment of putting the finished export in place."""
    import cmrstudio.export.writers as writers

    die = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
    if point == "before-manifest":
        writers.write_manifest = lambda root: die()
    elif point in ("set-aside", "swap"):  # the moment the old export has been moved away, if it ever is
        real = os.replace

        def replace(src, dst, *a, **k):
            real(src, dst, *a, **k)
            if Path(src) == Path(dest):
                die()
        if point == "set-aside":  # the path where the system cannot swap two folders in one step
            writers._exchange = lambda a, b: False
        os.replace = replace
    elif point == "after-swap":  # the new export is in place, the old one not yet deleted
        real_rmtree = shutil.rmtree
        writers.shutil.rmtree = lambda p, *a, **k: die() if ".partial-" in str(p) and Path(dest).exists() else real_rmtree(p, *a, **k)
    writers.export(source, dest, fmt="nifti", overwrite=True)
    ack(acks, "done")


TASKS = {"export": task_export, "gallery": task_gallery, "answers": task_answers, "export_dies_at": task_export_dies_at}


def driver_main() -> None:
    """Import once, then for each request fork a child that runs the task; kill it after the delay."""
    import cmrstudio.export  # noqa: F401
    import cmrstudio.project  # noqa: F401
    import cmrstudio.study.design  # noqa: F401
    import cmrstudio.study.store  # noqa: F401

    RENDERS.extend((res, aff) for res, aff, _ in (make_render(60 + k, z=k % 3) for k in range(4)))
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: do the work, never return into the driver's loop
            code = 1
            try:
                TASKS[req["task"]](**req["args"])
                code = 0
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        deadline = t0 + float(req["kill_after"])
        while True:
            wpid, status = os.waitpid(pid, os.WNOHANG)
            if wpid:
                break
            if time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.001)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL  # by the driver, or by itself on purpose
        print(json.dumps({"killed": killed, "exit": os.waitstatus_to_exitcode(status),
                          "seconds": round(time.monotonic() - t0, 4)}), flush=True)


class Driver:
    def __init__(self):
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, __file__, "--driver"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, encoding="utf-8", errors="replace", env=env, cwd=str(ROOT))
        line = self.proc.stdout.readline().strip()
        assert line == "ready", f"the kill-test driver did not start: {line!r}"

    def run(self, task: str, kill_after: float, **args) -> dict:
        self.proc.stdin.write(json.dumps({"task": task, "kill_after": kill_after, "args": args}) + "\n")
        self.proc.stdin.flush()
        out = json.loads(self.proc.stdout.readline())
        assert out["killed"] or out["exit"] == 0, f"the {task} child failed by itself (exit {out['exit']}); see its traceback above"
        return out

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def driver():
    d = Driver()
    yield d
    d.close()


# --------------------------------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from cmrstudio.project import Project

    p = Project.create(tmp_path_factory.mktemp("kill") / "project", name="kills")
    for k in range(6):
        res, aff, c = make_render(40 + k, z=k % 3, vendor=("siemens", "philips", "ge")[k % 3])
        p.add(res, {"case_id": c.case_id, "slice": k % 3, "phase": "ED"}, note=f"render {k}", rating=1 + k % 5, affine=aff)
    return p


def _check_export(dest: Path, ids: list[str]) -> None:
    from cmrstudio.export import verify

    assert verify(dest) == [], f"{dest} looks like an export but does not match its manifest"
    doc = json.loads((dest / "export.json").read_text(encoding="utf-8"))
    assert doc["cases"] == ids


def test_exports_killed_at_random_moments_leave_a_complete_export_or_none(driver, project, tmp_path):
    from cmrstudio.export import export

    ids = [it.id for it in project.items]
    rng = random.Random(1901)
    out = tmp_path / "exports"
    out.mkdir()
    # the time a whole export takes, per format, sets the range of kill moments
    durations = {}
    for fmt in ("nifti", "dicom"):
        r = driver.run("export", 60.0, source=str(project.folder), dest=str(out / f"full-{fmt}"), fmt=fmt, acks=str(tmp_path / "x"))
        assert not r["killed"]
        durations[fmt] = r["seconds"]
        _check_export(out / f"full-{fmt}", ids)
    replaced = out / "replaced"  # an export that each killed --overwrite export tries to replace
    export(project.folder, replaced, "nifti")
    kills = completed = i = 0
    while kills < KILLS and i < 3 * KILLS:  # an export that finished before its kill moment does not count
        i += 1
        fmt = "dicom" if i % 4 == 3 else "nifti"
        fresh = i % 2 == 0
        dest = out / (f"fresh{i}" if fresh else "replaced")
        acks = tmp_path / f"acks-export-{i}"
        t = durations[fmt]  # half the kills anywhere, half near the end, where the export is put in place
        r = driver.run("export", rng.uniform(0.0, 1.05 * t) if i % 2 else rng.uniform(0.7 * t, 1.05 * t), source=str(project.folder),
                       dest=str(dest), fmt=fmt, acks=str(acks))
        kills += r["killed"]
        completed += not r["killed"]
        if dest.exists():  # a killed fresh export left nothing under DEST, or the whole export
            _check_export(dest, ids)
        else:
            assert fresh and r["killed"], "the previous export vanished when the export replacing it was killed"
        # nothing beside the exports looks like an export unless it is one
        for d in out.iterdir():
            if not d.name.startswith(".") and d.is_dir():
                _check_export(d, ids)
    # the next export to the same DEST tidies what the killed ones left beside it
    left = {d.name.split(".partial-")[0].split(".replaced-")[0][1:] for d in out.iterdir() if d.name.startswith(".")}
    for name in sorted(left):
        export(project.folder, out / name, "nifti", overwrite=True)
        _check_export(out / name, ids)
    leftovers = [d.name for d in out.iterdir() if d.name.startswith(".")]
    assert leftovers == [], leftovers
    FIGURES["export"] = {"kills": kills, "completed": completed}
    assert kills >= 20, f"only {kills} of {KILLS} exports were killed mid-way; the kill moments are too late"


def test_exports_killed_at_their_most_delicate_moments(driver, project, tmp_path):
    """Deterministic kills where a half-done export would do most harm: before the manifest, with the new export
    in place but the old one not yet deleted, and (where the system cannot swap two folders in one step) with
    the old export set aside: DEST is always one whole export, and the next export tidies up."""
    from cmrstudio.export import export

    ids = [it.id for it in project.items]
    dest = tmp_path / "out"
    export(project.folder, dest, "nifti")
    for point in ("before-manifest", "after-swap", "set-aside"):
        r = driver.run("export_dies_at", 60.0, source=str(project.folder), dest=str(dest), point=point, acks=str(tmp_path / "a"))
        assert r["killed"], point
        if point == "set-aside":  # without the atomic swap DEST is briefly absent; the next export puts the old one back
            export(project.folder, tmp_path / "elsewhere", "nifti")  # an unrelated export does not touch it
            assert any(p.name.startswith(".out.replaced-") for p in tmp_path.iterdir())
            export(project.folder, dest, "nifti", overwrite=True)
        _check_export(dest, ids)
    export(project.folder, dest, "nifti", overwrite=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    if sys.platform.startswith("linux"):  # here the old export is never set aside: the two folders swap in one step
        r = driver.run("export_dies_at", 60.0, source=str(project.folder), dest=str(dest), point="swap", acks=str(tmp_path / "a"))
        assert not r["killed"] and r["exit"] == 0, "the old export was moved aside before the new one took its place"
        _check_export(dest, ids)


def test_a_flipped_byte_anywhere_in_an_export_is_caught(project, tmp_path):
    from cmrstudio.errors import CmrError
    from cmrstudio.export import export, verify

    dest = tmp_path / "exp"
    export(project.folder, dest, "nifti")
    files = sorted(p for p in dest.rglob("*") if p.is_file())
    rng = random.Random(7)
    caught = 0
    for f in files:
        copy = tmp_path / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(dest, copy)
        target = copy / f.relative_to(dest)
        data = bytearray(target.read_bytes())
        k = rng.randrange(len(data))
        data[k] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
        try:
            problems = verify(copy)
        except CmrError:
            problems = ["the manifest cannot be read"]
        assert problems, f"a flipped bit at byte {k} of {f.name} went unnoticed"
        caught += 1
    assert caught == len(files) >= 20
    # and the command says so: exit code 1, the file named
    from test_fuzz import run_cli

    data = bytearray((dest / "contact_sheet.png").read_bytes())
    data[100] ^= 0xFF
    (dest / "contact_sheet.png").write_bytes(bytes(data))
    rc, out, err = run_cli(["export", "--verify", str(dest)])
    assert rc == 1 and "contact_sheet.png has changed since the export" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------------- gallery
def _replay(acks: list[list[str]]):
    """The gallery that the acknowledged operations leave: {id: rating or None}, and the operation in flight."""
    state: dict[str, int | None] = {}
    pending = None
    for parts in acks:
        if parts[0] == "try":
            pending = parts[1:]
            continue
        if parts[0] == "abandoned":  # the test found the operation in flight had not happened
            pending = None
            continue
        op, iid = parts[1], parts[2]
        if op == "add":
            state[iid] = "new"
        elif op == "update":
            state[iid] = int(parts[3])
        elif op == "remove":
            state.pop(iid, None)
        pending = None
    return state, pending


def test_gallery_killed_at_random_moments_loses_nothing_and_leaves_nothing(driver, tmp_path):
    from cmrstudio.project import Project

    folder = tmp_path / "gallery"
    Project.create(folder, name="kills")
    acks = tmp_path / "acks-gallery"
    rng = random.Random(1902)
    kills, lost, ops = 0, 0, 0
    for i in range(KILLS):
        r = driver.run("gallery", rng.uniform(0.05, 0.9), folder=str(folder), acks=str(acks), seed=1000 + i)
        kills += r["killed"]
        p = Project.open(folder)  # tidies what the killed writer left
        listed = {it.id: it.rating for it in p.items}
        state, pending = _replay(read_acks(acks))
        if pending and pending[0] == "remove" and pending[1] not in listed:
            state.pop(pending[1], None)  # the remove in flight was saved before the kill
        ops = sum(1 for a in read_acks(acks) if a[0] == "done")
        # every acknowledged add that was not removed is listed; every acknowledged remove is gone
        missing = [iid for iid in state if iid not in listed]
        lost += len(missing)
        assert not missing, f"kill {i}: kept renders lost: {missing}"
        extra = [iid for iid in listed if iid not in state]
        if pending and pending[0] == "add":
            assert len(extra) <= 1, f"kill {i}: listed but never added: {extra}"
            for iid in extra:  # the add in flight was committed before the kill: it is complete
                state[iid] = "new"
        else:
            assert not extra, f"kill {i}: listed but never added: {extra}"
        for iid, rating in state.items():
            if isinstance(rating, int):
                inflight = pending and pending[0] == "update" and pending[1] == iid
                assert listed[iid] == rating or (inflight and listed[iid] == int(pending[2])), (i, iid, listed[iid], rating)
        # write down how the operation in flight ended, so the next round starts from the truth
        if pending:
            op, iid = pending[0], (extra[0] if pending[0] == "add" and extra else pending[1] if len(pending) > 1 else "")
            happened = (op == "add" and bool(extra)) or (op == "update" and listed.get(iid) == int(pending[2])) or \
                       (op == "remove" and iid not in listed)
            ack(str(acks), f"done {op} {iid}" + (f" {pending[2]}" if op == "update" else "") if happened else "abandoned")
        # every listed item is whole; no file without an entry, no temporary file
        assert p.check() == [], f"kill {i}: {p.check()}"
        want = {f.name for it in p.items for k, f in p.render_files(it.id).items()}
        have = {f.name for d in (p.renders_dir, p.thumbnails_dir) if d.is_dir() for f in d.iterdir()}
        assert have == want, f"kill {i}: files without an entry: {sorted(have - want)}; entries without files: {sorted(want - have)}"
        assert not [f for f in folder.iterdir() if f.name.startswith(".project.")], "a temporary project.json was left"
        unlisted = folder / ".unlisted"
        if unlisted.is_dir():  # only complete sets of files are kept aside; they read as renders
            for d in unlisted.iterdir():
                assert len(list(d.iterdir())) == 4, f"{d} holds an incomplete set"
    FIGURES["gallery"] = {"kills": kills, "operations_acknowledged": ops, "lost": lost}
    assert kills >= 20 and ops >= 3 * KILLS


def test_opening_a_project_tidies_what_a_killed_writer_left_unless_a_writer_is_at_work(tmp_path):
    import fcntl

    from cmrstudio.project import LOCK_FILE, Project

    p = Project.create(tmp_path / "p")
    for k in range(2):
        res, aff, _ = make_render(20 + k)
        p.add(res, {"slice": 1}, affine=aff)
    files = p.render_files("r0001")
    for key, f in files.items():  # a complete set nobody lists (its listing was never written), and a partial one
        shutil.copy(f, f.with_name(f.name.replace("r0001", "r0003")))
    shutil.copy(files["image"], files["image"].with_name("r0004_image.nii.gz"))
    (p.renders_dir / ".r0005_image.k2j3h4.tmp.nii.gz").write_bytes(b"half")
    (p.folder / ".project.x8d7s.tmp.json").write_text("{")
    leftovers = sorted(f.name for d in (p.renders_dir, p.thumbnails_dir) for f in d.iterdir()) + [".project.x8d7s.tmp.json"]

    fd = os.open(p.folder / LOCK_FILE, os.O_RDWR)  # a writer at work: nothing is touched
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        busy = Project.open(p.folder)
        assert busy.recovered == []
        assert sorted(f.name for d in (p.renders_dir, p.thumbnails_dir) for f in d.iterdir()) + [".project.x8d7s.tmp.json"] == leftovers
    finally:
        os.close(fd)

    q = Project.open(p.folder)
    assert len(q.recovered) == 3 and all("\n" not in s for s in q.recovered), q.recovered
    assert sorted(f.name for f in p.renders_dir.iterdir()) == sorted(
        f"r000{k}{s}" for k in (1, 2) for s in ("_image.nii.gz", "_mask.nii.gz", ".json"))
    assert sorted(f.name for f in p.thumbnails_dir.iterdir()) == ["r0001.png", "r0002.png"]
    kept = list((p.folder / ".unlisted").iterdir())
    assert len(kept) == 1 and kept[0].name.endswith("-r0003") and len(list(kept[0].iterdir())) == 4
    assert not (p.folder / ".project.x8d7s.tmp.json").exists() and q.check() == []
    assert [it.id for it in q.items] == ["r0001", "r0002"]
    assert q.add(make_render(30)[0]).id == "r0003"  # the id is free again: its files are out of the way


# --------------------------------------------------------------------------------------------------- answers
@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from cmrstudio.data.phantom import phantom_case
    from cmrstudio.io import write_case
    from cmrstudio.project import Project
    from cmrstudio.study.design import create_study

    base = tmp_path_factory.mktemp("study")
    real = base / "real"
    for seed, vendor, phase in [(1, "siemens", "ED"), (2, "philips", "ED"), (3, "siemens", "ES"), (4, "philips", "ES")]:
        write_case(phantom_case(seed, n_slices=4, shape=(96, 96), vendor=vendor, phase=phase), real)
    proj = Project.create(base / "renders")
    for k, (vendor, phase) in enumerate([("siemens", "ED"), ("philips", "ED"), ("siemens", "ES"), ("philips", "ES")] * 2):
        res, aff, c = make_render(80 + k, z=k % 3, vendor=vendor)
        proj.add(res, {"case_id": c.case_id, "slice": k % 3, "phase": phase}, affine=aff)
    return create_study([real], [proj.folder], base / "study", seed=3, mode="both", fill=True)


def test_answers_killed_at_random_moments_are_never_lost(driver, study, tmp_path):
    import sqlite3

    from cmrstudio.study.design import load_study
    from cmrstudio.study.store import Store

    n_questions = len(study.tasks())
    assert n_questions >= 16
    readers = [f"reader{k}" for k in range(10)]
    acks = tmp_path / "acks-answers"
    rng = random.Random(1903)
    kills, lost = 0, 0
    # how long one reader takes for the whole study sets the range of kill moments
    first = driver.run("answers", 120.0, study=str(study.folder), reader="timing", acks=str(tmp_path / "acks-timing"))
    span = first["seconds"]
    i = 0
    total = 0
    # a reader who finished before the kill moment does not count; and until KILLS answers are committed in all, most kills
    # have hit start-up (the span measured first can be short of a killed run's): go on killing
    while (kills < KILLS or total < KILLS) and i < 4 * KILLS:
        i += 1
        s = Store(load_study(study.folder))
        open_readers = [r for r in readers if len(s.answered(r)) < n_questions]
        s.close()
        if not open_readers:
            readers.append(f"reader{len(readers)}")
            open_readers = readers[-1:]
        reader = rng.choice(open_readers)
        r = driver.run("answers", rng.uniform(0.0, 0.8 * span), study=str(study.folder), reader=reader, acks=str(acks))
        kills += r["killed"]
        s = Store(load_study(study.folder))
        stored = {(row["reader"], row["mode"], row["item"]) for row in s.rows()}
        done = {tuple(a[1:]) for a in read_acks(acks) if a[0] == "done"}
        tried = [tuple(a[1:]) for a in read_acks(acks) if a[0] == "try"]
        missing = done - stored
        lost += len(missing)
        assert not missing, f"kill {i}: committed answers lost: {sorted(missing)[:3]}"
        unexpected = {t for t in stored if t[0] in readers} - done
        assert len(unexpected) <= 1 and unexpected <= set(tried[-1:]), f"kill {i}: answers nobody gave: {unexpected}"
        for t in unexpected:  # the answer in flight was committed just before the kill: write that down
            ack(str(acks), "done " + " ".join(t))
        before, total = total, sum(len(s.answered(r)) for r in readers)
        if r["killed"] and total == before:  # the kill hit start-up (a warm timing run can take 0.05 s, a cold start more):
            span *= 1.15  # later kill moments reach further into the answering
        elif not r["killed"]:  # the reader finished first: kill earlier
            span /= 1.15
        s.close()
        con = sqlite3.connect(str(study.folder / "answers.sqlite"))
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
    s = Store(load_study(study.folder))
    total = sum(len(s.answered(r)) for r in readers)
    s.close()
    FIGURES["answers"] = {"kills": kills, "answers_committed": total, "lost": lost}
    print(f"\nkills: export {FIGURES.get('export')}, gallery {FIGURES.get('gallery')}, answers {FIGURES['answers']}")
    assert kills >= 20 and total >= KILLS


if __name__ == "__main__" and "--driver" in sys.argv:
    driver_main()
