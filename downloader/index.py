"""The batch index: which URL owns which name in an output folder, and which files are complete.

It lives in `DEST/.downloader/index.sqlite`, out of the user's way. It is what lets a re-run skip a
complete file without asking the server, even when its name came from Content-Disposition, and
what keeps two URLs that want the same name from ever writing over each other, in one batch or
across batches into the same folder. SQLite (standard library) keeps it on disk, so memory does
not grow with the number of URLs, and several processes may share a folder.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections import deque
from pathlib import Path
from typing import NamedTuple

from .core.naming import STATE_DIR, STATE_SUFFIX, disambiguate
from .core.redirects import redact, url_key
from .errors import DiskError

FLUSH_AT = 4096
"""Completion records queued before the thread that completes a file writes them itself (the
feed thread writes them with every batch of names it claims)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB);
CREATE TABLE IF NOT EXISTS files (
    url TEXT PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0,
    size INTEGER,
    sha256 TEXT
)"""


class Entry(NamedTuple):
    """What the index knows of one URL (a named tuple: a re-run builds one per URL)."""

    name: str
    """Path relative to the output folder ("isos/debian.iso")."""
    complete: bool
    size: int | None
    sha256: str | None


class Index:
    """Name claims and completion records for one output folder. Thread-safe. URLs are kept with
    any password masked (`core.redirects.redact`): the folder may be shared, the password not."""

    def __init__(self, dest: Path) -> None:
        folder = dest / STATE_DIR
        try:
            folder.mkdir(parents=True, exist_ok=True)
            created = not (folder / "index.sqlite").exists()
            self._db = sqlite3.connect(folder / "index.sqlite", timeout=30, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA secure_delete=ON")  # a masked password leaves no trace behind
            self._db.executescript(_SCHEMA)
            self._salt = self._load_salt()
            self._mask_old_passwords()
        except (OSError, sqlite3.Error) as exc:
            raise DiskError(f"cannot use the index in {folder}: {exc}") from exc
        self._lock = threading.Lock()
        self._pending: deque[tuple] = deque()
        self.path = folder / "index.sqlite"
        self.orphans = created and _has_state_files(dest)
        """Whether `.part.state` files may exist that no claim in this index accounts for (the index
        is new, in a folder that has some): then every job looks for one, not only those whose
        name was claimed before."""
        self.warning: str | None = None
        """Set when the index could not be updated (a full disk); the batch itself went on."""

    def _load_salt(self) -> bytes:
        """The folder's own salt for `key` (made once, kept in the index)."""
        self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('salt', ?)", (os.urandom(16),))
        return bytes(self._db.execute("SELECT value FROM meta WHERE key = 'salt'").fetchone()[0])

    @property
    def salt(self) -> bytes:
        """The folder's salt, for whoever must key URLs as `key` does without opening the index
        (a cluster worker: see downloader.cluster)."""
        return self._salt

    def key(self, url: str) -> str:
        """How this folder keeps `url` (in the index and in state files): see core.redirects.url_key."""
        return url_key(url, self._salt)

    def _mask_old_passwords(self) -> None:
        """An index written before URLs were kept masked: mask them now (a row whose masked URL
        is already there is dropped; the file under its name still counts as complete)."""
        self._db.create_function("redact", 1, redact, deterministic=True)
        self._db.create_function("url_key", 1, self.key, deterministic=True)
        old = "instr(url, '@') > 0 AND redact(url) != url"
        if self._db.execute(f"SELECT 1 FROM files WHERE {old} LIMIT 1").fetchone():
            with self._transaction():
                self._db.execute(f"UPDATE OR IGNORE files SET url = url_key(url) WHERE {old}")
                self._db.execute(f"DELETE FROM files WHERE {old}")

    def lookup(self, url: str) -> Entry | None:
        try:
            with self._lock:
                row = self._db.execute("SELECT name, complete, size, sha256 FROM files WHERE url=?",
                                       (self.key(url),)).fetchone()
        except sqlite3.Error:
            return None
        return Entry(row[0], bool(row[1]), row[2], row[3]) if row else None

    def owner(self, name: str) -> str | None:
        """The URL that claimed `name`, if any."""
        with self._lock:
            row = self._db.execute("SELECT url FROM files WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def claim(self, url: str, name: str) -> str:
        """The name `url` will be saved under: `name`, or a deterministic variant of it
        (`core.naming.disambiguate`) when another URL already owns `name`. A URL that owned another
        name gives it up (its Content-Disposition said otherwise)."""
        try:
            with self._lock:
                return self._claim(self.key(url), name)
        except sqlite3.Error as exc:
            raise DiskError(f"cannot record file names in {self.path}: {exc}",
                            disk_full="full" in str(exc)) from exc

    def known(self, urls: list[str]) -> list[Entry | None]:
        """What the index knows of each URL, in one query per 500 URLs (a re-run's skip path)."""
        keys = [self.key(url) for url in urls]
        try:
            with self._lock:
                found = self._entries(keys)
        except sqlite3.Error as exc:
            raise DiskError(f"cannot read the index {self.path}: {exc}") from exc
        return [found.get(key) for key in keys]

    def claim_many(self, wants: list[tuple[str, str]]) -> list[str]:
        """`claim` for many `(url, name)` pairs in one transaction, in order; the completion
        records queued so far are written with them. Either every claim is on disk when this
        returns, or none is and DiskError is raised."""
        try:
            with self._lock:
                with self._transaction():
                    names = [self._claim(self.key(url), name, known_absent=True) for url, name in wants]
                self._flush_locked()
        except sqlite3.Error as exc:
            raise DiskError(f"cannot record file names in {self.path}: {exc}",
                            disk_full="full" in str(exc)) from exc
        return names

    @contextlib.contextmanager
    def _transaction(self):
        """One explicit transaction (the connection is in autocommit mode, where every statement,
        each row of an executemany included, would otherwise be a transaction of its own)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _entries(self, keys: list[str]) -> dict[str, Entry]:
        found = {}
        for start in range(0, len(keys), 500):
            part = keys[start:start + 500]
            rows = self._db.execute("SELECT url, name, complete, size, sha256 FROM files WHERE url IN "
                                    f"({','.join('?' * len(part))})", part)
            for url, name, complete, size, sha256 in rows:
                found[url] = Entry(name, complete == 1, size, sha256)
        return found

    def _claim(self, url: str, name: str, known_absent: bool = False) -> str:
        """`known_absent`: the caller has just seen no row for `url` (a batch of new URLs), so the
        insert is tried first; another process may still have claimed it since, which the
        failed insert tells."""
        if not known_absent:
            row = self._db.execute("SELECT name FROM files WHERE url=?", (url,)).fetchone()
            if row and row[0] == name:
                return name
            if row:
                self._db.execute("DELETE FROM files WHERE url=?", (url,))
        candidate, salt = name, url
        while True:
            try:
                self._db.execute("INSERT INTO files (url, name) VALUES (?, ?)", (url, candidate))
                return candidate
            except sqlite3.IntegrityError:
                if known_absent:  # the URL itself may be taken (another process): do it the long way
                    return self._claim(url, name)
                folder, slash, base = name.rpartition("/")
                candidate, salt = folder + slash + disambiguate(base, salt), salt + "#"

    def complete(self, url: str, size: int | None, sha256: str | None) -> None:
        """Record a complete file. Records are queued and written in batches, by the feed thread
        with each batch of claims, or here once many are queued: a crash loses at most the
        records not written yet, which costs nothing, since a file under its final name counts as
        complete anyway (its size is then simply not known to the next run)."""
        # a deque needs no lock to append to: the database's lock, which the feed thread holds
        # while it claims names, is taken only to write a full batch
        self._pending.append((size, sha256, self.key(url)))
        if len(self._pending) >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        """Write the completion records queued so far."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        """Write the pending completion records (the caller holds the lock). Losing them costs
        nothing but a note: a file under its final name counts as complete on the next run anyway."""
        if self._pending:
            pending = [self._pending.popleft() for _ in range(len(self._pending))]
            try:
                with self._transaction():
                    self._db.executemany("UPDATE files SET complete=1, size=?, sha256=? WHERE url=?", pending)
            except sqlite3.Error as exc:
                self.warning = f"could not update the index {self.path}: {exc} (the files themselves are fine)"

    def close(self) -> None:
        with self._lock:
            self._flush_locked()
            self._db.close()


def _has_state_files(dest: Path) -> bool:
    """Whether any `.part.state` file lies in `dest` or below (stops at the first)."""
    for _, _, files in os.walk(dest):
        if any(name.endswith(STATE_SUFFIX) for name in files):
            return True
    return False
