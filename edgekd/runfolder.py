"""The output folder of a run: one writer at a time, and only edgekd's own files are ever removed.

A run claims its folder before it writes anything:

- **Lock.** ``<out>/.edgekd/lock`` is held with ``fcntl.flock`` for the whole run and names the
  holder (pid, host, start time). A second run on the same folder is refused, naming that pid.
  The kernel drops the lock when the holder dies, even by ``kill -9``, so a stale lock file left
  behind never blocks the next run.
- **Manifest.** ``<out>/.edgekd/manifest.json`` lists every file the run wrote (each atomic write
  is recorded through ``edgekd.atomic.recording``). A new run (without ``--resume``) removes the
  files the previous run's manifest lists, and nothing else.
- **Ownership.** A folder that is not empty and has no manifest was not made by edgekd: it is
  refused unless the user says ``--overwrite`` (files are then written beside the user's own,
  and still none of theirs is removed).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from edgekd import atomic
from edgekd.errors import ConfigError

META_DIR = ".edgekd"
MANIFEST = "manifest.json"
LOCK = "lock"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class FolderBusyError(ConfigError):
    """Another live process holds the run folder's lock."""


def check_run_name(name: str) -> str:
    """A recipe ``name`` is a folder name under the output root: letters, digits, ``.``, ``_``,
    ``-``, at most 100 characters, starting with a letter or digit (so never ``..`` or a path).

    Raises:
        ConfigError: the name could escape the output root or is not a portable file name.
    """
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(f"name: {name!r} is not a usable run name: use 1-100 letters, digits, '.', '_' "
                          f"or '-', starting with a letter or digit (it names the folder edgekd-out/<name>)")
    return name


class RunFolder:
    """A claimed output folder: the lock is held and every atomic write is recorded until ``release``."""

    def __init__(self, out: Path, lock_fd: int, previous: list[str], created: bool = False):
        self.out, self._lock_fd, self._created = out, lock_fd, created
        self.meta = out / META_DIR
        self.files: set[str] = set(previous)  # the previous run's files (a resumed run keeps them)
        self._recorder = None

    # -- the manifest --------------------------------------------------------------------------

    def record(self, path: Path) -> None:
        try:
            rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(self.out))
        except ValueError:
            return  # outside the folder (a teacher cache): not this run's to remove
        if rel.parts and rel.parts[0] == META_DIR:
            return
        key = rel.as_posix()
        if key not in self.files:
            self.files.add(key)
            self._write_manifest()

    def _write_manifest(self) -> None:
        atomic.write_text(self.meta / MANIFEST, json.dumps({"format": "edgekd-run-manifest", "version": 1,
                                                            "files": sorted(self.files)}, indent=1) + "\n")

    def remove_recorded(self) -> list[str]:
        """Delete the files the manifest lists (and folders left empty by that); returns them."""
        removed = []
        for rel in sorted(self.files):
            path = self.out / rel
            if not _inside(path, self.out):
                continue  # a hand-edited manifest never reaches outside the folder
            if path.is_file() or path.is_symlink():
                path.unlink()
                removed.append(rel)
            for parent in path.parents:  # models/, checkpoints/, ... when nothing else is in them
                if parent == self.out or not _inside(parent, self.out):
                    break
                with contextlib.suppress(OSError):
                    parent.rmdir()
        self.files.clear()
        self._write_manifest()
        return removed

    # -- lifetime ----------------------------------------------------------------------------------

    def __enter__(self) -> RunFolder:
        self._recorder = atomic.recording(self.record)
        self._recorder.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.release(failed=exc[0] is not None)

    def release(self, failed: bool = False) -> None:
        """Stop recording and drop the lock. A run that failed before writing anything leaves no
        trace: its ``.edgekd`` folder (and ``out`` itself, if the run created it) is removed."""
        if self._recorder is not None:
            self._recorder.__exit__(None, None, None)
            self._recorder = None
        if failed and not self.files:
            for name in (MANIFEST, LOCK):
                with contextlib.suppress(OSError):
                    (self.meta / name).unlink()
            for folder in (self.meta, self.out) if self._created else (self.meta,):
                with contextlib.suppress(OSError):
                    folder.rmdir()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = -1


def claim(out: str | Path, *, overwrite: bool = False) -> RunFolder:
    """Lock ``out`` for one run. The files of the previous run there stay until the new run's
    checks pass (``RunFolder.remove_recorded``; a resumed run keeps them).

    Raises:
        FolderBusyError: another live process holds the folder (its pid is named).
        ConfigError: ``out`` is not empty and edgekd did not make it (say ``--overwrite``), or
            ``out`` is a file.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: this is a file, not a folder")
    meta = out / META_DIR
    manifest = _read_manifest(meta / MANIFEST)
    user_files = out.is_dir() and any(p.name != META_DIR for p in out.iterdir())
    if manifest is None and user_files and not overwrite:
        raise ConfigError(f"--out {out}: this folder is not empty and edgekd did not create it (no "
                          f"{META_DIR}/{MANIFEST}); edgekd never removes files it did not write. Choose "
                          f"a new or empty folder, or pass --overwrite to write beside the files there")
    created = not out.exists()
    meta.mkdir(parents=True, exist_ok=True)
    fd = _lock(meta / LOCK, out)
    return RunFolder(out, fd, manifest or [], created=created)  # a new run removes these once its checks pass


def _lock(path: Path, out: Path) -> int:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise FolderBusyError(f"--out {out}: another edgekd run is writing this folder ({holder}); wait for it "
                              f"to finish or choose another --out (a lock whose process has died is taken "
                              f"over automatically)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode() + b"\n", 0)
    return fd


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


def _read_manifest(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        if data.get("format") != "edgekd-run-manifest" or not all(isinstance(f, str) for f in files):
            raise ValueError
        return list(files)
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{path}: the run manifest is unreadable, so edgekd cannot tell its files from "
                          f"yours; remove the {META_DIR} folder and pass --overwrite (nothing is deleted then), "
                          f"or choose another --out") from None


def _inside(path: Path, root: Path) -> bool:
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
        return os.path.abspath(path) != os.path.abspath(root)
    except ValueError:
        return False


@contextlib.contextmanager
def claimed(out: str | Path, *, overwrite: bool = False,
            lead: bool = True) -> Iterator[RunFolder | None]:
    """``claim`` for the lead process of a run (others share the lead's claim and yield None)."""
    if not lead:
        yield None
        return
    with claim(out, overwrite=overwrite) as folder:
        yield folder
