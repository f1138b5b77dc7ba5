import copy

import pytest
import torch

from edgekd.distill import DistillConfig, TrainConfig, distill, evaluate, train_scratch
from edgekd.errors import TrainingError
from edgekd.models import create_model


def test_teacher_is_frozen_and_untouched(digits, float_student):
    teacher = copy.deepcopy(float_student).train()
    before = copy.deepcopy(teacher.state_dict())
    torch.manual_seed(0)
    student = create_model("cnn-student-xs")
    distill(student, teacher, digits, DistillConfig(), TrainConfig(epochs=1))
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for key, value in teacher.state_dict().items():  # BN running stats too: eval mode throughout
        assert torch.equal(value, before[key]), key


def test_kd_student_learns_from_teacher(digits, float_student):
    torch.manual_seed(0)
    student = create_model("cnn-student-s")
    result = distill(student, float_student, digits, DistillConfig(), TrainConfig(epochs=4))
    assert evaluate(student, digits.x_test, digits.y_test) > 0.85
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]
    assert {"loss_kd", "loss_ce", "val_accuracy"} <= set(result.history[0])
    assert result.history[-1]["loss_kd"] < result.history[0]["loss_kd"]
    assert result.best_val_accuracy == max(r["val_accuracy"] for r in result.history)


def test_unlabelled_signal_only(digits, float_student):
    """ce_weight 0: the student learns from the teacher's soft targets alone."""
    torch.manual_seed(0)
    student = create_model("cnn-student-s")
    result = distill(student, float_student, digits, DistillConfig(ce_weight=0.0, kd_weight=1.0),
                     TrainConfig(epochs=4))
    assert "loss_ce" not in result.history[0]
    assert evaluate(student, digits.x_test, digits.y_test) > 0.8


def test_nan_loss_names_epoch_and_term(digits):
    torch.manual_seed(0)
    model = create_model("cnn-student-xs")
    broken = copy.copy(digits)
    broken.x_train = digits.x_train.clone()
    broken.x_train[:] = float("nan")
    with pytest.raises(TrainingError, match=r"loss term 'ce' became nan in epoch 1"):
        train_scratch(model, broken, TrainConfig(epochs=2), desc="scratch")


def test_same_seed_same_result(digits):
    accs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = create_model("cnn-student-xs")
        train_scratch(model, digits, TrainConfig(epochs=2, seed=5), augment_shift=1)
        accs.append(evaluate(model, digits.x_val, digits.y_val))
    assert accs[0] == accs[1]
