"""Text data: the built-in stdlib corpus, .txt/.jsonl/.csv files, the teacher's tokenizer, the
token cache, seeded splits and bucketed lengths."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from edgekd.config import FieldError
from edgekd.data.corpus import stdlib_sentences
from edgekd.data.datasets import DataSplits
from edgekd.data.text import (BUILTIN, TextConfig, Tokenizer, length_grouped_order, load_text_data, read_texts,
                              tokenize_cached, tokenizer_file, trim_to_bucket)
from edgekd.errors import DataError

pytest.importorskip("tokenizers", reason='the text extra is not installed: pip install -e ".[text]"')


def test_the_builtin_corpus_is_real_prose_read_from_the_standard_library():
    sentences = stdlib_sentences()
    assert len(sentences) > 5000 and len(set(sentences)) == len(sentences)
    assert stdlib_sentences() == sentences  # the same order every time
    for s in sentences:
        assert 6 <= len(s.split()) <= 40 and s[0].isupper() and s.endswith(".") and s.isascii(), s
        assert not re.search(r"[=_{}<>\[\]`]|::|\w\(", s), s
    assert "Return an iterator over all non-overlapping matches in the string." in sentences  # (re.finditer)


def test_txt_jsonl_and_csv_files(tmp_path):
    (tmp_path / "a.txt").write_text("first text\n\n  second text  \nthird\n")
    assert read_texts(str(tmp_path / "a.txt"), TextConfig()).texts == ["first text", "second text", "third"]
    rows = [{"text": "good movie", "label": "pos"}, {"text": "bad film", "label": "neg"},
            {"text": "fine", "label": "pos"}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = read_texts(str(tmp_path / "b.jsonl"), TextConfig(label_column="label"))
    assert data.class_names == ["neg", "pos"] and data.labels.tolist() == [1, 0, 1]
    (tmp_path / "c.csv").write_text('sentence,y\n"a, quoted text",1\nplain,0\nthird one,1\n')
    data = read_texts(str(tmp_path / "c.csv"), TextConfig(text_column="sentence", label_column="y"))
    assert data.texts[0] == "a, quoted text" and data.class_names == ["0", "1"] and data.labels.tolist() == [1, 0, 1]
    unlabelled = read_texts(str(tmp_path / "b.jsonl"), TextConfig())
    assert unlabelled.labels.tolist() == [-1, -1, -1] and unlabelled.class_names == []


@pytest.mark.parametrize("name, content, config, message", [
    ("bad.jsonl", '{"text": "ok"}\n{"text": broken}\n{"text": "x"}\n', {}, r"bad.jsonl:2: not a JSON object"),
    ("field.jsonl", '{"text": "ok"}\n{"body": "no text"}\n{"text": "x"}\n', {}, r"field.jsonl:2: no field 'text'; the object has 'body'"),
    ("empty.jsonl", '{"text": "ok"}\n{"text": "  "}\n{"text": "x"}\n', {}, r"empty.jsonl:2: field 'text' is '  '"),
    ("col.csv", "body,label\nx,1\ny,0\nz,1\n", {}, r"col.csv: no column 'text'; the header has 'body', 'label'"),
    ("gap.jsonl", "\n".join(json.dumps({"text": t, "y": y}) for t, y in [("a", 0), ("b", 2), ("c", 2)]),
     {"label_column": "y"}, r"integer labels must be the class indices 0..K-1"),
    ("labels.txt", "a\nb\nc\n", {"label_column": "y"}, r"a .txt file holds texts only"),
    ("two.txt", "a\nb\n", {}, r"2 text\(s\); a train/val/test split needs at least 3"),
    ("data.parquet", "x", {}, r"unsupported text file type '.parquet'"),
])
def test_bad_text_files_name_the_line_and_the_fix(tmp_path, name, content, config, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        read_texts(str(tmp_path / name), TextConfig(**config))


def test_missing_file_and_bad_settings_are_clear(tmp_path):
    with pytest.raises(DataError, match=rf"nope.txt: text data not found; use '{BUILTIN}'"):
        read_texts(str(tmp_path / "nope.txt"), TextConfig())
    with pytest.raises(DataError, match="a built-in corpus brings its own labels"):
        read_texts(BUILTIN, TextConfig(label_column="label"))
    with pytest.raises(FieldError, match="buckets.1"):
        TextConfig(max_length=64, buckets=[32, 128])
    with pytest.raises(DataError, match="tokenizer file not found"):
        tokenizer_file(str(tmp_path))


def test_the_teacher_tokenizer_pads_and_truncates_to_the_length():
    tok = Tokenizer(tokenizer_file("teacher"), max_length=16)
    ids, mask = tok(["Return an iterator over all matches.", " ".join(["word"] * 40)])
    assert ids.shape == mask.shape == (2, 16) and ids.dtype == np.int64
    assert ids[0, 0] == 101 and ids[0, mask[0].sum() - 1] == 102  # [CLS] ... [SEP], as BERT's vocabulary has them
    assert (ids[0, mask[0].sum():] == tok.pad_id).all() and tok.pad_id == 0 and mask[1].all()  # truncated: no padding
    assert tok.vocab_size == 30522


def test_tokens_are_cached_and_a_damaged_entry_is_rebuilt(tmp_path, monkeypatch):
    tok = Tokenizer(tokenizer_file("teacher"), max_length=12)
    texts = ["A first sentence.", "A second one here."]
    first = tokenize_cached(texts, tok, tmp_path)
    (entry,) = list(tmp_path.iterdir())
    monkeypatch.setattr(Tokenizer, "__call__", lambda self, t: (_ for _ in ()).throw(AssertionError("tokenized")))
    again = tokenize_cached(texts, tok, tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    entry.write_bytes(b"not an npz")
    monkeypatch.undo()
    rebuilt = tokenize_cached(texts, tok, tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(first, rebuilt))
    assert np.load(entry)["input_ids"].shape == (2, 12)


def test_builtin_splits_are_seeded_disjoint_and_tokenized(tmp_path):
    config = TextConfig(max_length=32, limit=300)
    a = load_text_data(BUILTIN, config, [0.6, 0.2, 0.2], seed=0, cache_dir=tmp_path)
    ids, mask = a.x_train
    assert ids.shape == (180, 32) and mask.shape == (180, 32) and ids.dtype == torch.int64
    assert len(a.x_val[0]) == 60 and len(a.x_test[0]) == 60 and (a.y_train == -1).all()
    assert not set(a.texts["train"]) & set(a.texts["test"])
    assert a.vocab_size == 30522 and a.input_shape == (32,)
    b = load_text_data(BUILTIN, config, [0.6, 0.2, 0.2], seed=0, cache_dir=tmp_path)
    c = load_text_data(BUILTIN, config, [0.6, 0.2, 0.2], seed=1, cache_dir=tmp_path)
    assert a.fingerprint == b.fingerprint != c.fingerprint and a.texts["test"] != c.texts["test"]


def test_labelled_text_is_split_per_class(tmp_path):
    rows = [{"text": f"sentence number {i} about {'cats' if i % 3 else 'dogs'}.", "label": "cat" if i % 3 else "dog"}
            for i in range(60)]
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    splits = load_text_data(str(tmp_path / "l.jsonl"), TextConfig(label_column="label", max_length=16),
                            [0.5, 0.25, 0.25], seed=3, cache_dir=tmp_path)
    assert splits.class_names == ["cat", "dog"]
    for y in (splits.y_train, splits.y_val, splits.y_test):
        assert set(y.tolist()) == {0, 1}
    assert int((splits.y_test == 1).sum()) == 5  # a quarter of the 20 dog sentences


def test_a_batch_is_cut_to_the_shortest_bucket_that_holds_it():
    ids = torch.arange(2 * 128).reshape(2, 128)
    mask = torch.zeros(2, 128, dtype=torch.long)
    mask[0, :20], mask[1, :40] = 1, 1
    short_ids, short_mask = trim_to_bucket(ids, mask, [32, 64, 128])
    assert short_ids.shape == (2, 64) and torch.equal(short_ids, ids[:, :64]) and short_mask.sum() == 60
    assert trim_to_bucket(ids, mask, [])[0].shape == (2, 40)  # no buckets: its longest text
    assert trim_to_bucket(ids, mask, [16, 32])[0].shape == (2, 128)  # nothing holds 40 tokens


def test_length_grouped_batches_hold_similar_lengths_and_every_sample_once():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 60, (1000,))
    order = torch.randperm(1000, generator=generator)[:997]  # a short last batch
    grouped = length_grouped_order(order, lengths, 32, generator, chunk_batches=10)
    assert sorted(grouped.tolist()) == sorted(order.tolist())
    batches = grouped.split(32)
    assert len(batches[-1]) == 997 % 32  # the short batch stays last, so the others stay whole
    spread = lambda order: sum(int(lengths[b].max() - lengths[b].min()) for b in order.split(32))  # noqa: E731
    assert spread(grouped) < spread(order) / 4  # padding waste: far less than random batches
    assert not torch.equal(grouped, length_grouped_order(order, lengths, 32, generator, chunk_batches=10))


def test_text_training_batches_are_grouped_and_cut_but_evaluation_keeps_the_length():
    from edgekd.tasks import create_task

    lengths = torch.tensor([3, 30, 4, 29, 5, 31, 6, 28])
    mask = (torch.arange(32)[None, :] < lengths[:, None]).long()
    data = DataSplits((mask * 5, mask), torch.zeros(8), (mask, mask), torch.zeros(8), (mask, mask),
                      torch.zeros(8), class_names=[], source="t", fingerprint="f", length_buckets=[],
                      group_by_length=True)
    task = create_task("sentence-embedding")
    order = task.batch_order(torch.arange(8), data, 4, torch.Generator().manual_seed(0))
    assert {frozenset(b.tolist()) for b in order.split(4)} == {frozenset({1, 3, 5, 7}), frozenset({0, 2, 4, 6})}
    short = [b for b in order.split(4) if 0 in b.tolist()][0]
    ids, cut = task.trim((data.x_train[0][short], data.x_train[1][short]), data)
    assert ids.shape == (4, 6) and torch.equal(cut.sum(1), lengths[short])
    data.group_by_length = False
    assert torch.equal(task.batch_order(torch.arange(8), data, 4, torch.Generator()), torch.arange(8))


def test_transfer_text_joins_the_training_split_only_unlabelled_and_deduplicated(tmp_path):
    rows = [{"text": f"The {animal} number {i} sat on the mat.", "label": animal}
            for animal in ("cat", "dog") for i in range(10)]
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    extra = ["An unlabelled sentence about zebras.", "The cat number 3 sat on the mat.",  # the second: in the corpus
             "An unlabelled sentence about zebras.", "Another one about yaks."]
    (tmp_path / "extra.txt").write_text("\n".join(extra))
    config = TextConfig(label_column="label", max_length=16, transfer=[str(tmp_path / "extra.txt")])
    plain = load_text_data(str(tmp_path / "l.jsonl"), TextConfig(label_column="label", max_length=16),
                           [0.5, 0.25, 0.25], seed=3, cache_dir=tmp_path)
    splits = load_text_data(str(tmp_path / "l.jsonl"), config, [0.5, 0.25, 0.25], seed=3, cache_dir=tmp_path)
    assert splits.transfer_rows == 2 and splits.texts["train"][-2:] == [extra[0], extra[3]]
    assert splits.y_train[-2:].tolist() == [-1, -1] and torch.equal(splits.y_train[:-2], plain.y_train)
    assert torch.equal(splits.target_train_inputs()[0], plain.x_train[0])  # what vocabulary pruning reads
    assert torch.equal(splits.x_test[0], plain.x_test[0]) and splits.fingerprint != plain.fingerprint
    limited = load_text_data(str(tmp_path / "l.jsonl"), dataclasses.replace(config, transfer_limit=1),
                             [0.5, 0.25, 0.25], seed=3, cache_dir=tmp_path)
    assert limited.transfer_rows == 1


def test_site_docs_are_prose_from_installed_packages_and_never_stdlib_sentences():
    from edgekd.data.corpus import site_sentences

    sentences = site_sentences(("click",))
    assert len(sentences) > 20
    assert all(s[:1].isupper() and s.endswith(".") for s in sentences)
    assert not set(sentences) & set(stdlib_sentences())
    assert site_sentences(("no_such_package_here",)) == ()
