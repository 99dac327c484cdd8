"""Answers of a reader study in SQLite: every answer committed at once (WAL, synchronous FULL).

A crash or a closed window loses nothing: the reader resumes where they left off. Several
readers (several windows or processes) can answer the same study at once; SQLite serialises
the writes, and a database held locked by another program gets one sentence, not a traceback.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timezone

from cmrstudio.errors import CmrError
from cmrstudio.study.design import Study

DB_FILE = "answers.sqlite"
ANSWERS = {"single": ("real", "synthetic"), "2afc": ("left", "right")}

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS readers (name TEXT PRIMARY KEY, created TEXT NOT NULL, sessions INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS open_sessions (reader TEXT PRIMARY KEY, pid INTEGER NOT NULL, token TEXT NOT NULL, started TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
    reader TEXT NOT NULL REFERENCES readers(name),
    mode TEXT NOT NULL,
    item TEXT NOT NULL,
    answer TEXT NOT NULL,
    confidence INTEGER,
    free_text TEXT,
    seconds REAL NOT NULL,
    answered_at TEXT NOT NULL,
    PRIMARY KEY (reader, mode, item)
);
"""


class Store:
    def __init__(self, study: Study, timeout: float = 5.0):
        self.study = study
        self.path = study.folder / DB_FILE
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False)
            self._run(lambda c: c.execute("PRAGMA journal_mode=WAL"))
            self._run(lambda c: c.execute("PRAGMA synchronous=FULL"))
            self._run(lambda c: c.executescript(SCHEMA))
            row = self._run(lambda c: c.execute("SELECT value FROM meta WHERE key='study_sha256'").fetchone())
            if row is None:
                self._run(lambda c: c.execute("INSERT OR IGNORE INTO meta VALUES ('study_sha256', ?)", (study.sha256,)))
            elif row[0] != study.sha256:
                raise CmrError(f"{self.path} holds answers to another version of this study (its images differ); "
                               "keep that database with its own study, and read this study with a fresh one.")
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None

    def _error(self, exc: Exception) -> CmrError:
        msg = str(exc)
        if "locked" in msg or "busy" in msg:
            return CmrError(f"The study database {self.path} is locked by another program ({msg}); close it or wait, then try again — "
                            "no answer was lost.")
        return CmrError(f"The study database {self.path} cannot be used ({msg}); it may be damaged — keep a copy and ask the study coordinator.")

    def _run(self, fn):
        try:
            return fn(self.conn)
        except sqlite3.OperationalError as exc:
            raise self._error(exc) from None

    # -- readers ---------------------------------------------------------------------------------
    def readers(self) -> list[str]:
        return [r[0] for r in self._run(lambda c: c.execute("SELECT name FROM readers ORDER BY created").fetchall())]

    @staticmethod
    def clean_name(reader: str) -> str:
        return (reader or "").strip()

    def start(self, reader: str, resume: bool = False, machine: bool = False) -> set[tuple[str, str]]:
        """Register ``reader`` (or, with ``resume``, continue their session); returns what they already answered.

        One open session per reader: a second window for the same name is refused until the first closes
        (a session left by a crashed process does not count).
        """
        import os
        import uuid

        from cmrstudio.study.stats import is_machine

        name = self.clean_name(reader)
        if not machine and is_machine(name):
            raise CmrError(f"The reader name {name!r} starts with 'machine', which marks machine readers; choose another name.")
        if not name:
            raise CmrError("A reader needs a name or code (--reader), so their answers can be told apart.")
        if len(name) > 64 or any(ch in name for ch in "\n\r\t"):
            raise CmrError(f"The reader name {name!r} must be one line of at most 64 characters.")
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")

        def go(c):
            c.execute("BEGIN IMMEDIATE")
            try:
                row = c.execute("SELECT name FROM readers WHERE name=?", (name,)).fetchone()
                if row is not None and not resume:
                    n = c.execute("SELECT COUNT(*) FROM answers WHERE reader=?", (name,)).fetchone()[0]
                    raise CmrError(f"The reader name {name!r} is already taken in this study ({n} answers); "
                                   f"to continue as {name!r} use --resume, otherwise choose another name.")
                held = c.execute("SELECT pid, token FROM open_sessions WHERE reader=?", (name,)).fetchone()
                if held is not None and _alive(held[0]) and held[1] != getattr(self, "_token", None):
                    raise CmrError(f"{name!r} is already reading this study in another window; close that one first.")
                if row is None:
                    c.execute("INSERT INTO readers(name, created, sessions) VALUES (?, ?, 1)", (name, now))
                else:
                    c.execute("UPDATE readers SET sessions = sessions + 1 WHERE name=?", (name,))
                self._token = uuid.uuid4().hex
                c.execute("INSERT OR REPLACE INTO open_sessions VALUES (?, ?, ?, ?)", (name, os.getpid(), self._token, now))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

        self._run(go)
        self._reader = name
        return self.answered(name)

    def end(self) -> None:
        """Close this window's session (its answers are already saved)."""
        tok, name = getattr(self, "_token", None), getattr(self, "_reader", None)
        if tok and name:
            try:
                self.conn.execute("DELETE FROM open_sessions WHERE reader=? AND token=?", (name, tok))
            except sqlite3.Error:
                pass  # a stale row is ignored once this process is gone
            self._token = None

    def forget_reader(self, reader: str) -> None:
        """Remove a machine reader and its answers (a retrained classifier replaces it); human readers' answers are final."""
        if not reader.startswith("machine"):
            raise CmrError(f"Only machine readers can be removed; {reader!r} is a human reader whose answers are final.")

        def go(c):
            c.execute("BEGIN IMMEDIATE")
            c.execute("DELETE FROM answers WHERE reader=?", (reader,))
            c.execute("DELETE FROM readers WHERE name=?", (reader,))
            c.execute("DELETE FROM open_sessions WHERE reader=?", (reader,))
            c.execute("COMMIT")

        self._run(go)

    def answered(self, reader: str) -> set[tuple[str, str]]:
        name = self.clean_name(reader)
        rows = self._run(lambda c: c.execute("SELECT mode, item FROM answers WHERE reader=?", (name,)).fetchall())
        return {(m, i) for m, i in rows}

    # -- answers ---------------------------------------------------------------------------------
    def answer(self, reader: str, mode: str, item: str, answer: str, confidence: int | None, seconds: float,
               free_text: str | None = None, retries: int = 2) -> None:
        """Commit one answer now (one transaction). A second answer to the same question is refused."""
        if mode not in ANSWERS or answer not in ANSWERS[mode]:
            raise CmrError(f"{answer!r} is not an answer to a {mode} question; use {' or '.join(ANSWERS.get(mode, ()))}.")
        if confidence is not None and not (isinstance(confidence, int) and 1 <= confidence <= 5):
            raise CmrError(f"Confidence {confidence!r} must be 1–5.")
        self.study.truth(mode, item)  # the question exists
        reader = self.clean_name(reader)
        row = (reader, mode, item, answer, confidence, free_text or None, float(seconds),
               datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
        for attempt in range(retries):
            try:
                self.conn.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
                return
            except sqlite3.IntegrityError:
                raise CmrError(f"{reader} has already answered {mode} question {item}; answers are final.") from None
            except sqlite3.OperationalError as exc:
                if attempt == retries - 1:
                    raise self._error(exc) from None
                time.sleep(0.2 * (attempt + 1))

    def rows(self) -> list[dict]:
        cur = self._run(lambda c: c.execute("SELECT reader, mode, item, answer, confidence, free_text, seconds, answered_at FROM answers "
                                            "ORDER BY answered_at"))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def close(self) -> None:
        self.end()
        try:
            self.conn.close()
        except sqlite3.Error:
            pass


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def to_answers(study: Study, rows: list[dict]):
    """Stored rows joined with the study's truth, as :class:`cmrstudio.study.stats.Answer` records."""
    from cmrstudio.study.stats import Answer

    out = []
    for r in rows:
        if r["mode"] == "single":
            it = study.item(r["item"])
            vendor, phase = it.vendor, it.phase
        else:
            p = study.pair(r["item"])
            it = study.item(p.left)
            vendor, phase = it.vendor, it.phase
        out.append(Answer(r["reader"], r["item"], r["mode"], study.truth(r["mode"], r["item"]), r["answer"], r["confidence"],
                          float(r["seconds"]), vendor, phase))
    return out
