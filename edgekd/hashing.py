"""Content hashes of files: fingerprints of teacher files, and the names artifacts get on remote
hosts and phones (derived from the content, never from a local file name)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha16(path: str | Path) -> str:
    """The first 16 hex digits of the file's SHA-256, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def content_name(path: str | Path) -> str:
    """``edgekd-<hash><suffix>``: the name a copy of ``path`` gets on another machine."""
    return f"edgekd-{file_sha16(path)}{Path(path).suffix.lower()}"


__all__ = ["content_name", "file_sha16"]
