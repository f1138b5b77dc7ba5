"""The built-in detectors: the head contract (boxes, scores), sizes, and a clear size error."""

import pytest
import torch

from edgekd.models import count_parameters, create_model


@pytest.mark.parametrize("arch, params", [("det-student", 42_084), ("det-teacher", 852_988)])
def test_detectors_give_boxes_and_scores_at_every_anchor_point(arch, params):
    torch.manual_seed(0)
    model = create_model(arch, in_channels=3, num_classes=5, image_size=(32, 48)).eval()
    boxes, scores = model(torch.rand(2, 3, 32, 48))
    assert boxes.shape == (2, 8 * 12 + 4 * 6, 4) and scores.shape == (2, 120, 5)
    assert ((scores > 0) & (scores < 1)).all()
    # every box holds its anchor point and reaches at most 4 strides from it
    centres = model.anchors[:, :2]
    assert (boxes[..., :2] <= centres).all() and (boxes[..., 2:] >= centres).all()
    assert count_parameters(create_model(arch)) == params


def test_a_detector_refuses_images_of_another_size():
    model = create_model("det-student", image_size=(32, 32)).eval()
    with pytest.raises(ValueError, match="built for 32x32 images .* got 8x8; build it with image_size"):
        model(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="divisible by 8"):
        create_model("det-student", image_size=(30, 32))
