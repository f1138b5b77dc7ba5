"""The detection task: box maths, mAP, agreement between detectors, the anchor-point contract."""

import numpy as np
import pytest
import torch

from edgekd.errors import ConfigError
from edgekd.tasks import boxes as box_ops
from edgekd.tasks import create_task


def test_iou_matrix_golden():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(box_ops.iou_matrix(a, b), [[1.0, 50 / 150, 0.0]])


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], float)
    assert box_ops.nms(boxes, np.array([0.8, 0.9, 0.7]), 0.5).tolist() == [1, 2]


def _dets(boxes, scores, classes):
    return box_ops.Detections(np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores, float),
                              np.asarray(classes, np.int64))


def test_average_precision_by_hand():
    # two ground-truth boxes of class 0; detections: hit (0.9), miss (0.8), hit (0.7)
    truth = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([0, 0]))]
    det = _dets([[0, 0, 10, 10], [40, 40, 50, 50], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [0, 0, 0])
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: envelope area 0.5 * 1 + 0.5 * 2/3
    ap, stats = box_ops.mean_average_precision([det], truth, num_classes=2)
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert stats == {"precision": pytest.approx(2 / 3), "recall": 1.0}


def test_a_wrong_class_scores_nothing():
    truth = [(np.array([[0, 0, 10, 10]], float), np.array([1]))]
    ap, _ = box_ops.mean_average_precision([_dets([[0, 0, 10, 10]], [0.9], [0])], truth, num_classes=2)
    assert ap == 0.0


def test_agreement_matches_class_and_box():
    a = [_dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [3, 4])]
    assert box_ops.agreement(a, a, 0.5) == 1.0
    moved = [_dets([[0, 0, 10, 10], [26, 26, 36, 36]], [0.9, 0.8], [3, 4])]  # IoU 16/184
    assert box_ops.agreement(a, moved, 0.5) == 0.5
    relabelled = [_dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [3, 5])]
    assert box_ops.agreement(a, relabelled, 0.5) == 0.5
    assert box_ops.agreement([_dets([], [], [])], [_dets([], [], [])], 0.5) == 1.0


def _outputs(boxes, scores):  # one image's head outputs joined: (1, A, 4 + K)
    return np.concatenate([np.asarray(boxes, np.float32), np.asarray(scores, np.float32)], -1)[None]


def test_task_metrics_and_agreement_from_head_outputs():
    task = create_task("object-detection")
    # three points, two classes; points 0 and 1 see the same object (NMS keeps one)
    out = _outputs([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], [[0.9, 0.0], [0.6, 0.0], [0.0, 0.8]])
    labels = np.array([[[0, 0, 0, 10, 10], [1, 20, 20, 30, 30], [-1, -1, -1, -1, -1]]])
    metrics = task.metrics(out, labels)
    assert metrics["map50"] == 1.0 and metrics["precision"] == 1.0 and metrics["recall"] == 1.0
    assert task.predictions(out).tolist() == [2]
    worse = out.copy()
    worse[0, 2, 5] = 0.1  # the class-1 object drops below the score threshold
    assert task.agreement(worse, out) == pytest.approx(2 * 1 / 3)
    parity = task.parity(worse, out)
    assert parity["boxes"]["max_abs"] == 0.0 and parity["scores"]["max_abs"] == pytest.approx(0.7)
    background = out.copy()
    background[0, 1, 5] = 0.0
    background[0, 1, 4] = 0.1  # point 1 now sees nothing: its box is never read
    moved = background.copy()
    moved[0, 1, :4] += 50
    moved[0, 2, :4] += 1
    assert task.parity(moved, background)["boxes"] == {"max_abs": 1.0, "mean_abs": 0.5, "points": 2}


def test_join_outputs_finds_boxes_and_scores_by_name():
    task = create_task("object-detection")
    boxes, scores = np.zeros((2, 5, 4)), np.ones((2, 5, 3))
    joined = task.join_outputs([scores, boxes], ["scores", "boxes"])
    assert joined.shape == (2, 5, 7) and (joined[..., :4] == 0).all()
    with pytest.raises(ConfigError, match="boxes and scores"):
        task.join_outputs([boxes], ["boxes"])


def test_anchor_points_follow_the_head_contract():
    from edgekd.models import create_model

    task = create_task("object-detection")
    centres, strides = task.anchor_points(80, (32, 32))  # strides 4 (8x8) and 8 (4x4)
    assert strides[:64].eq(4).all() and strides[64:].eq(8).all()
    assert centres[0].tolist() == [2.0, 2.0] and centres[1].tolist() == [6.0, 2.0] and centres[8].tolist() == [2.0, 6.0]
    assert centres[64].tolist() == [4.0, 4.0]
    model = create_model("det-student", in_channels=1, num_classes=10, image_size=(32, 32))
    torch.testing.assert_close(model.anchors[:, :2], centres)  # the built-in head keeps the contract
    with pytest.raises(ConfigError, match="no set of strides"):
        task.anchor_points(79, (32, 32))


def test_forward_refuses_a_model_that_is_not_a_detection_head():
    task = create_task("object-detection")
    with pytest.raises(ConfigError, match="returns \\(boxes"):
        task.forward(torch.nn.Linear(4, 3), torch.zeros(2, 4))


def test_evaluate_session_with_a_task_takes_reference_outputs_not_predictions():
    from edgekd.runtime import evaluate_session

    with pytest.raises(ConfigError, match="compare with reference_outputs"):
        evaluate_session(object(), np.zeros((1, 1, 32, 32)), reference=np.zeros(1),
                         task=create_task("object-detection"))
