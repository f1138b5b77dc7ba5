"""Atomic file writes: write to a temp file in the same folder, fsync, then rename over the target.

An interrupted run never leaves a half-written artifact that looks valid, and the previous
version of the file stays intact until the new one is complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from edgekd.errors import WriteError
from edgekd.units import format_size

_RECORDERS: list[Callable[[Path], None]] = []


@contextlib.contextmanager
def recording(callback: Callable[[Path], None]) -> Iterator[None]:
    """Call ``callback(path)`` after every completed atomic write while the block runs (a run's
    manifest of the files it wrote: ``edgekd.runfolder``)."""
    _RECORDERS.append(callback)
    try:
        yield
    finally:
        _RECORDERS.remove(callback)


def record(path: str | Path) -> None:
    """Tell the recorders about a file written by other means (an OpenVINO .xml/.bin pair)."""
    for callback in list(_RECORDERS):
        callback(Path(path))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``.

    For writers that insist on a filename (torch.onnx.export, openvino.save_model). On error the
    temporary file is removed and ``path`` is left as it was.

    Raises:
        WriteError: the file could not be written (full disk, no permission, read-only file
            system): names ``path`` (never the temporary file) and the free space there.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the temporary name stays short, whatever the target's: a 245-character name still works
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:48]}.", suffix=".tmp" + path.suffix[:16], dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise write_error(path, err) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp_path, path)
    except OSError as err:
        raise write_error(path, err) from None
    except RuntimeError as err:  # torch.save's C++ writer: "PytorchStreamWriter failed writing file ..."
        if "writ" not in str(err).lower():
            raise
        raise write_error(path, err) from None
    finally:
        tmp_path.unlink(missing_ok=True)
    record(path)


def write_error(path: Path, err: BaseException) -> WriteError:
    """A WriteError for ``path`` that says why and how much space is left on its disk."""
    if isinstance(err, WriteError):
        return err
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).strip().splitlines()[-1][:200]
    free = free_bytes(path.parent)
    space = f"; {format_size(free)} free on that disk" if free is not None else ""
    hint = (" Free some space (or write elsewhere with --out) and run again; with `edgekd run`, "
            "--resume continues from the last saved epoch.")
    error = WriteError(f"cannot write {path}: {reason}{space}.{hint}")
    error.errno = getattr(err, "errno", None)
    error.filename = str(path)
    return error


def free_bytes(folder: Path) -> int | None:
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))
