"""``stdlib-docs``: a built-in corpus of real English, read at run time from the docstrings of the
installed Python standard library.

Every ``.py`` file under the interpreter's ``stdlib`` path (tests, demos and site-packages left
out) is parsed with ``ast`` (nothing is imported or run), in sorted order; the docstrings of its
module, classes and functions are cut into sentences, and a sentence is kept when it reads as
prose: 6 to 40 words, starting with a capital letter and ending with a full stop, ASCII, and free
of code (no ``=``, brackets, backticks, ``::``, calls such as ``f(``). Duplicates are dropped,
first occurrence kept. CPython 3.11 gives about 9,500 sentences ("Return an iterator over all
non-overlapping matches in the string."); another Python version gives another corpus, which the
data fingerprint records.
"""

from __future__ import annotations

import ast
import re
import sysconfig
from functools import lru_cache
from pathlib import Path

SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3",
                "turtledemo", "ensurepip"}
MIN_WORDS, MAX_WORDS = 6, 40
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE = re.compile(r"[=_{}<>\[\]`|\\#@*]|::|\.\.\.|\w\(|^\W")
_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@lru_cache(maxsize=2)
def stdlib_sentences(root: str | None = None) -> tuple[str, ...]:
    """The corpus (see the module docstring), in file and source order."""
    base = Path(root) if root else stdlib_root()
    files = sorted(p for p in base.rglob("*.py") if not set(p.relative_to(base).parts[:-1]) & SKIPPED_DIRS)
    seen: dict[str, None] = {}
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue  # (a file of another Python's syntax, or unreadable: not prose anyway)
        for node in ast.walk(tree):
            if isinstance(node, _DOCUMENTED):
                for sentence in _sentences(ast.get_docstring(node) or ""):
                    seen.setdefault(sentence)
    return tuple(seen)


def _sentences(doc: str):
    for paragraph in re.split(r"\n\s*\n", doc):
        for sentence in _SENTENCE_END.split(" ".join(paragraph.split())):
            if _is_prose(sentence):
                yield sentence


def _is_prose(sentence: str) -> bool:
    words = len(sentence.split())
    return (MIN_WORDS <= words <= MAX_WORDS and sentence[:1].isupper() and sentence.endswith(".")
            and sentence.isascii() and not _CODE.search(sentence))


__all__ = ["stdlib_sentences"]
