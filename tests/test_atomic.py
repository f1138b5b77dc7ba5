"""Atomic writes: complete files only, usual permissions, nothing left behind on failure."""

import os
import stat

import pytest

from edgekd import atomic


def test_written_file_gets_umask_permissions_not_mkstemp_0600(tmp_path):
    path = atomic.write_text(tmp_path / "report.json", "{}\n")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert path.read_text() == "{}\n"


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path):
    path = atomic.write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
