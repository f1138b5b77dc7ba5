"""Objectives from recipes: terms, schedules, feature distillation through hooks (float and QAT)."""

import copy

import pytest
import torch

from edgekd.distill import DistillConfig, TrainConfig, distill, evaluate
from edgekd.distill.schedules import Schedule
from edgekd.errors import ConfigError, TrainingError
from edgekd.models import create_model
from edgekd.quant import QATConfig, calibrate, prepare_qat

FITNETS = {"loss": "fitnets", "weight": 1.0, "student": "features.block1", "teacher": "features.block2"}


def test_schedules_by_hand():
    warm = Schedule(kind="linear_warmup", value=2.0, warmup_epochs=3)
    assert [warm.value_at(e, 10) for e in range(5)] == [0.5, 1.0, 1.5, 2.0, 2.0]
    cos = Schedule(kind="cosine", value=8.0, final=2.0)
    assert [round(cos.value_at(e, 3), 6) for e in range(3)] == [8.0, 5.0, 2.0]
    assert Schedule(value=3.0).value_at(7, 10) == 3.0


def test_terms_from_recipe_data_with_scheduled_weight_and_temperature():
    cfg = DistillConfig.from_dict({"terms": [
        {"loss": "kd", "weight": {"kind": "linear_warmup", "value": 1.0, "warmup_epochs": 2},
         "temperature": {"kind": "cosine", "value": 8.0, "final": 2.0}},
        {"loss": "ce", "weight": 0.5}, FITNETS]})
    terms = cfg.build_terms()
    assert [t.name for t in terms] == ["kd", "ce", "fitnets:features.block1"]
    terms[0].set_epoch(0, 5)
    assert (terms[0].weight, terms[0].loss.temperature) == (pytest.approx(1 / 3), pytest.approx(8.0))
    terms[0].set_epoch(4, 5)
    assert (terms[0].weight, terms[0].loss.temperature) == (1.0, pytest.approx(2.0))


@pytest.mark.parametrize("term, message", [
    ({"loss": "fitnets", "student": "features.block1"}, "teacher: feature loss 'fitnets' needs a module path"),
    ({"loss": "kd", "student": "x"}, "'kd' is not a feature loss"),
    ({"loss": "dkd", "options": {"gamma": 1.0}}, "loss 'dkd': bad options"),
])
def test_bad_terms_are_config_errors(term, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig.from_dict({"terms": [term]}).build_terms()


def test_feature_distillation_trains_adapter_and_logs_each_term(digits, float_student):
    torch.manual_seed(0)
    teacher = create_model("cnn-teacher")  # 128-channel block2 vs the student's 24-channel block1
    student = create_model("cnn-student-s")
    cfg = DistillConfig.from_dict({"terms": [{"loss": "kd", "temperature": 2.0}, {"loss": "ce"}, FITNETS]})
    result = distill(student, teacher, digits, cfg, TrainConfig(epochs=2))
    row = result.history[-1]
    assert {"loss_kd", "loss_ce", "loss_fitnets:features.block1"} <= set(row)
    assert result.history[1]["loss_fitnets:features.block1"] < result.history[0]["loss_fitnets:features.block1"]
    assert not any("adapter" in k for k in student.state_dict())  # the adapter never joins the student


def test_feature_distillation_keeps_working_on_the_int8_student(digits, float_student):
    torch.manual_seed(0)
    q = prepare_qat(copy.deepcopy(float_student), QATConfig())
    calibrate(q, [digits.x_train[:64]])
    teacher = create_model("cnn-teacher")
    cfg = DistillConfig.from_dict({"terms": [{"loss": "ce"}, {**FITNETS, "loss": "at"}]})
    result = distill(q, teacher, digits, cfg, TrainConfig(epochs=1, lr=1e-4))
    assert result.history[0]["loss_at:features.block1"] > 0
    assert evaluate(q, digits.x_test, digits.y_test) > 0.8


def test_unknown_feature_path_suggests_the_nearest(digits):
    cfg = DistillConfig.from_dict({"terms": [{**FITNETS, "student": "features.blok1"}]})
    with pytest.raises(ConfigError, match="did you mean 'features.block1'"):
        distill(create_model("cnn-student-s"), create_model("cnn-teacher"), digits, cfg, TrainConfig(epochs=1))


def test_hook_that_never_fires_is_an_error(digits):
    class Detour(torch.nn.Module):  # owns a module that forward never calls
        def __init__(self):
            super().__init__()
            self.net, self.unused = create_model("cnn-student-xs"), torch.nn.Conv2d(1, 4, 1)

        def forward(self, x):
            return self.net(x)

    cfg = DistillConfig.from_dict({"terms": [{**FITNETS, "student": "unused", "teacher": "features.block1"}]})
    with pytest.raises(TrainingError, match="hook.*'unused'.*never fired"):
        distill(Detour(), create_model("cnn-teacher"), digits, cfg, TrainConfig(epochs=1))


def test_feature_loss_that_stays_zero_is_an_error(digits):
    teacher = create_model("cnn-student-s")
    student = copy.deepcopy(teacher)
    for p in list(student.parameters()) + list(teacher.parameters()):
        torch.nn.init.zeros_(p)  # both features identically zero: the loss carries no signal
    cfg = DistillConfig.from_dict({"terms": [{"loss": "ce"}, {**FITNETS, "teacher": "features.block1"}]})
    with pytest.raises(TrainingError, match="feature loss 'fitnets:features.block1' was exactly zero"):
        distill(student, teacher, digits, cfg, TrainConfig(epochs=1))


def test_label_fraction_scratch_sees_only_labelled_and_distillation_sees_all(digits, float_student):
    from edgekd.distill import train_scratch

    part = digits.with_label_fraction(0.1, 0)
    assert int(part.train_labelled.sum()) == pytest.approx(0.1 * len(digits.y_train), abs=10)
    torch.manual_seed(0)
    scratch = create_model("cnn-student-s")
    train_scratch(scratch, part, TrainConfig(epochs=2))
    no_labels = digits.with_label_fraction(0.0, 0)
    with pytest.raises(TrainingError, match="no labelled training samples"):
        train_scratch(create_model("cnn-student-s"), no_labels, TrainConfig(epochs=1))
    student = create_model("cnn-student-s")
    result = distill(student, float_student, no_labels, DistillConfig(kd_weight=1.0, ce_weight=0.0),
                     TrainConfig(epochs=6))
    assert result.history[-1]["loss_kd"] < result.history[0]["loss_kd"]
    assert evaluate(student, digits.x_test, digits.y_test) > 0.8  # learnt without a single label


def test_teacher_that_gives_no_logits_is_refused_for_logit_hungry_losses(digits, float_student):
    from edgekd.distill.teachers import LiveTeacher

    class LabelsOnly(LiveTeacher):
        kind = "labels"

    with pytest.raises(ConfigError, match="needs the teacher's logits; this teacher gives only labels"):
        distill(create_model("cnn-student-xs"), LabelsOnly(float_student), digits,
                DistillConfig(loss="dkd"), TrainConfig(epochs=1))


def test_epoch_checkpoint_resume_matches_an_uninterrupted_run(tmp_path, digits, float_student):
    cfg, train_cfg = DistillConfig(temperature=2.0), TrainConfig(epochs=4, seed=1)

    def fresh():
        torch.manual_seed(0)
        return create_model("cnn-student-xs")

    whole = fresh()
    full = distill(whole, float_student, digits, cfg, train_cfg, augment_shift=1)

    class Interrupt(Exception):
        pass

    def stop_at_3(epoch):
        if epoch == 2:
            raise Interrupt

    ckpt = tmp_path / "kd.state"
    with pytest.raises(Interrupt):
        distill(fresh(), float_student, digits, cfg, train_cfg, augment_shift=1, checkpoint=ckpt,
                on_epoch_start=stop_at_3)
    assert ckpt.is_file()  # two epochs were saved
    resumed_model = fresh()
    resumed = distill(resumed_model, float_student, digits, cfg, train_cfg, augment_shift=1, checkpoint=ckpt)
    assert [r["val_accuracy"] for r in resumed.history] == [r["val_accuracy"] for r in full.history]
    for a, b in zip(whole.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("term, message", [
    ({"loss": "kd", "temperature": 0.0}, "temperature: must be > 0"),
    ({"loss": "kd", "weight": {"kind": "cosine", "value": 1.0, "final": -1.0}}, "weight: must be >= 0"),
])
def test_term_values_are_validated(term, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig.from_dict({"terms": [term]})


def test_checkpoint_is_not_resumed_unless_asked(tmp_path, digits):
    ckpt = tmp_path / "s.state"
    torch.manual_seed(0)
    train_cfg = TrainConfig(epochs=2)
    from edgekd.distill import train_scratch

    train_scratch(create_model("cnn-student-xs"), digits, train_cfg, checkpoint=ckpt)
    fresh = train_scratch(create_model("cnn-student-xs"), digits, TrainConfig(epochs=1), checkpoint=ckpt)
    assert len(fresh.history) == 1  # started over, did not pick up the old two epochs
    with pytest.raises(TrainingError, match="written by a run with other settings"):
        train_scratch(create_model("cnn-student-xs"), digits, TrainConfig(epochs=3), checkpoint=ckpt,
                      resume=True, run_key="another-run")
