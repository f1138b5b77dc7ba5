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

``stdlib-topics``: the same sentences labelled with the part of the library they document, for
text classification: eight topics, each a group of top-level modules (``TOPICS``: "gui" is
tkinter, idlelib and turtle; "mail" is email, mailbox and smtplib; ...), about 5,700 sentences
on CPython 3.11, ordered by a hash of the sentence so that any prefix (``text.limit``) mixes the
topics. Many sentences could come from anywhere ("Return the value."): no model gets all right.

``site-docs``: prose sentences, by the same rules, from the docstrings of installed third-party
packages (``SITE_PACKAGES``: torch, numpy, scikit-learn, onnx, onnxruntime, openvino,
transformers, sentence-transformers; those not installed are skipped), minus every sentence of
``stdlib-docs``, ordered by a hash of the sentence. It is unlabelled *transfer* text for
distillation (``data.text.transfer``): more of what the teacher can be asked about, never part of
a validation or test split. About 37,000 sentences with torch 2.13 and the text extra installed;
its size depends on the versions installed, which the data fingerprint records.
"""

from __future__ import annotations

import ast
import hashlib
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


TOPICS: dict[str, tuple[str, ...]] = {  # topic -> the top-level modules and packages it covers
    "gui": ("tkinter", "idlelib", "turtle"),
    "mail": ("email", "mailbox", "smtplib"),
    "concurrency": ("asyncio", "threading", "multiprocessing", "concurrent"),
    "packaging": ("distutils", "importlib"),
    "networking": ("http", "urllib", "xmlrpc", "ftplib"),
    "xml": ("xml",),
    "logging": ("logging",),
    "testing": ("unittest", "doctest", "pdb", "bdb"),
}


SITE_PACKAGES = ("torch", "numpy", "sklearn", "onnx", "onnxruntime", "openvino", "transformers",
                 "sentence_transformers")


def stdlib_sentences(root: str | None = None) -> tuple[str, ...]:
    """The corpus (see the module docstring), in file and source order."""
    return tuple(_documented(root))


def stdlib_topics(root: str | None = None) -> tuple[list[str], list[str]]:
    """``stdlib-topics`` (see the module docstring): its sentences and their topics."""
    topic_of = {module: topic for topic, modules in TOPICS.items() for module in modules}
    pairs = [(s, topic_of[m]) for s, m in _documented(root).items() if m in topic_of]
    pairs.sort(key=lambda pair: hashlib.sha256(pair[0].encode()).digest())
    return [s for s, _ in pairs], [t for _, t in pairs]


@lru_cache(maxsize=2)
def site_sentences(packages: tuple[str, ...] = SITE_PACKAGES) -> tuple[str, ...]:
    """``site-docs`` (see the module docstring)."""
    import importlib.util

    stdlib = set(_documented(None))
    found: dict[str, str] = {}
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        for folder in spec.submodule_search_locations:
            for sentence, top in _documented_files(Path(folder), top=name).items():
                if sentence not in stdlib:
                    found.setdefault(sentence, top)
    return tuple(sorted(found, key=lambda s: hashlib.sha256(s.encode()).digest()))


@lru_cache(maxsize=2)
def _documented(root: str | None = None) -> dict[str, str]:
    """Every kept sentence -> the top-level module or package of the file it was first found in."""
    return _documented_files(Path(root) if root else stdlib_root())


def _documented_files(base: Path, top: str | None = None) -> dict[str, str]:
    """``_documented`` of the ``.py`` files under ``base``; ``top`` names them all, else each
    file's first path part under ``base``."""
    files = sorted(p for p in base.rglob("*.py") if not set(p.relative_to(base).parts[:-1]) & SKIPPED_DIRS)
    seen: dict[str, str] = {}
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue  # (a file of another Python's syntax, or unreadable: not prose anyway)
        where = top or path.relative_to(base).parts[0].removesuffix(".py")
        for node in ast.walk(tree):
            if isinstance(node, _DOCUMENTED):
                for sentence in _sentences(ast.get_docstring(node) or ""):
                    seen.setdefault(sentence, where)
    return seen


def _sentences(doc: str):
    for paragraph in re.split(r"\n\s*\n", doc):
        for sentence in _SENTENCE_END.split(" ".join(paragraph.split())):
            if _is_prose(sentence):
                yield sentence


def _is_prose(sentence: str) -> bool:
    words = len(sentence.split())
    return (MIN_WORDS <= words <= MAX_WORDS and sentence[:1].isupper() and sentence.endswith(".")
            and sentence.isascii() and not _CODE.search(sentence))


__all__ = ["SITE_PACKAGES", "TOPICS", "site_sentences", "stdlib_sentences", "stdlib_topics"]
