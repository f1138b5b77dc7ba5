"""Detection losses: GIoU by hand, assignment, and distillation towards a teacher's head."""

import pytest
import torch

from edgekd.data.detection import load_detection_data  # noqa: F401  (the module the task reads)
from edgekd.distill.api import DistillConfig, check_distill_setup
from edgekd.distill.losses import LOSSES, Batch, TeacherOutput
from edgekd.distill.losses.detection import giou
from edgekd.errors import ConfigError
from edgekd.tasks import create_task


class _Data:  # what bind() reads of the data
    input_shape = (1, 32, 32)


def _bound(name, **kwargs):
    loss = LOSSES.get(name)(**kwargs)
    loss.bind(create_task("object-detection"), _Data())
    return loss


def test_giou_by_hand():
    a = torch.tensor([[0.0, 0, 10, 10]])
    assert giou(a, a).item() == pytest.approx(1.0)
    b = torch.tensor([[20.0, 0, 30, 10]])  # disjoint: IoU 0, hull 30x10, union 200
    assert giou(a, b).item() == pytest.approx(0 - (300 - 200) / 300)


def _head(task, boxes_of_point, classes_of_point, k=10):
    """Joined outputs (1, 80, 4 + k) predicting the given boxes/classes at the given points."""
    centres, _ = task.anchor_points(80, (32, 32))
    out = torch.zeros(1, 80, 4 + k)
    out[0, :, :4] = centres.repeat(1, 2) + torch.tensor([-2.0, -2, 2, 2])
    out[0, :, 4:] = 0.001
    for point, box in boxes_of_point.items():
        out[0, point, :4] = torch.tensor(box, dtype=torch.float)
        out[0, point, 4 + classes_of_point[point]] = 0.999
    return out


def test_detection_loss_is_lowest_for_the_ground_truth_at_the_points_inside_it():
    task = create_task("object-detection")
    loss = _bound("detection")
    labels = torch.tensor([[[3, 0, 0, 8, 8], [-1, -1, -1, -1, -1]]])  # one digit in the top-left 8x8
    # stride-4 points 0, 1, 8, 9 lie inside it (centres 2 and 6); stride 8's point 64 (centre 4) too
    inside = {p: [0, 0, 8, 8] for p in (0, 1, 8, 9, 64)}
    right = loss(Batch(_head(task, inside, dict.fromkeys(inside, 3)), labels))
    wrong_class = loss(Batch(_head(task, inside, dict.fromkeys(inside, 4)), labels))
    wrong_points = loss(Batch(_head(task, {p: [0, 0, 8, 8] for p in (20, 30, 40, 50, 70)},
                                    dict.fromkeys((20, 30, 40, 50, 70), 3)), labels))
    assert right < 0.2 and wrong_class > 5 and wrong_points > 5, (right, wrong_class, wrong_points)
    unlabelled = torch.full((1, 2, 5), -1)
    out = _head(task, inside, dict.fromkeys(inside, 3)).requires_grad_()
    zero = loss(Batch(out, unlabelled))
    assert zero.item() == 0.0
    zero.backward()  # an unlabelled image teaches nothing, and does not break the graph


def test_detection_kd_is_zero_at_the_teacher_and_pulls_towards_it():
    task = create_task("object-detection")
    kd = _bound("detection-kd", temperature=2.0)
    teacher = _head(task, {0: [0, 0, 8, 8]}, {0: 3})
    same = kd(Batch(teacher.clone(), teacher=TeacherOutput("logits", logits=teacher)))
    assert same.item() == pytest.approx(0.0, abs=1e-4)
    student = _head(task, {0: [0, 0, 5, 5]}, {0: 2}).requires_grad_()
    value = kd(Batch(student, teacher=TeacherOutput("logits", logits=teacher)))
    value.backward()
    assert value > 1.0
    assert student.grad[0, 0, 4 + 3] < 0 and student.grad[0, 0, 4 + 2] > 0  # towards the teacher's class
    assert student.grad[0, 0, 2] < 0  # and its larger box
    with pytest.raises(ConfigError, match="same classes"):
        kd(Batch(student[..., :12], teacher=TeacherOutput("logits", logits=teacher)))


def test_a_teacher_with_other_anchor_points_is_read_at_the_nearest_ones():
    """A YOLO-style teacher (strides 8, 16, 32: 21 points on 32x32) for a stride 4/8 student (80 points)."""
    task = create_task("object-detection")
    kd = _bound("detection-kd")
    teacher_points, _ = task.anchor_points(21, (32, 32))
    teacher = torch.zeros(1, 21, 14)
    teacher[0, :, :4] = teacher_points.repeat(1, 2) + torch.tensor([-3.0, -3, 3, 3])
    teacher[0, :, 4:] = 0.001
    teacher[0, 0, 4 + 7] = 0.99  # stride 8's first point, centre (4, 4), sees a 7
    student = _head(task, {}, {}).requires_grad_()
    kd(Batch(student, teacher=TeacherOutput("logits", logits=teacher))).backward()
    pulled = student.grad[0, :, 4 + 7] < -1e-3  # the student's points told to score a 7
    # stride-4 points with centres (2, 2), (6, 2), (2, 6), (6, 6) and stride-8 (4, 4) are nearest to it
    assert pulled.nonzero().flatten().tolist() == [0, 1, 8, 9, 64]


def test_a_head_loss_used_outside_a_run_says_so():
    with pytest.raises(ConfigError, match="bind"):
        LOSSES.get("detection")()(Batch(torch.zeros(1, 80, 14), torch.zeros(1, 1, 5, dtype=torch.long)))


def test_short_form_means_the_tasks_losses_and_classifier_losses_are_refused():
    task = create_task("object-detection")
    names = [t.name for t in DistillConfig().build_terms(task)]
    assert [type(t.loss).__name__ for t in DistillConfig().build_terms(task)] == ["DetectionKDLoss", "DetectionLoss"]
    assert names == ["kd", "ce"]
    check_distill_setup(DistillConfig(), onnx_teacher=False, num_classes=10, task=task)
    with pytest.raises(ConfigError, match="loss 'dkd' reads class_logits or token_logits outputs; task "
                                          "'object-detection' gives detection outputs"):
        check_distill_setup(DistillConfig(loss="dkd"), onnx_teacher=False, num_classes=10, task=task)
    with pytest.raises(ConfigError, match="needs the teacher's logits"):
        check_distill_setup(DistillConfig(teacher_output="topk", top_k=3), onnx_teacher=False, num_classes=10,
                            task=task)


HEAD_LOSSES = [n for n in LOSSES.names() if "detection" in (getattr(LOSSES.get(n), "targets", None) or ())]
assert HEAD_LOSSES == ["detection", "detection-kd"]  # the contract below runs for each


@pytest.mark.parametrize("name", HEAD_LOSSES)
def test_head_loss_contract(name):
    """Every detection-head loss: scalar, finite, differentiable w.r.t. the student only."""
    task = create_task("object-detection")
    g = torch.Generator().manual_seed(0)
    student = torch.cat([torch.rand(2, 80, 4, generator=g) * 32, torch.rand(2, 80, 10, generator=g)], -1)
    student.requires_grad_()
    teacher = _head(task, {0: [0, 0, 8, 8]}, {0: 3}).expand(2, -1, -1)
    labels = torch.tensor([[[3, 0, 0, 8, 8]], [[-1, -1, -1, -1, -1]]])
    value = _bound(name, temperature=3.0)(Batch(student, labels, TeacherOutput("logits", logits=teacher)))
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
