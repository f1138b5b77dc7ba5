"""The built-in image-classification task: its input spec, metrics by hand, model arguments."""

import numpy as np
import pytest
import torch

from edgekd.data.datasets import DataConfig
from edgekd.errors import UnknownNameError
from edgekd.tasks import create_task, list_tasks


@pytest.fixture(scope="module")
def digits():
    task = create_task("image-classification")
    return task, task.load_data(DataConfig())


def test_image_task_spec_from_the_data(digits):
    task, data = digits
    (spec,) = task.input_spec(data)
    assert (spec.name, spec.dtype, spec.shape) == ("input", "float32", ("batch", 1, 8, 8))
    assert task.output_spec(data)[0].shape == ("batch", 10)
    assert task.model_args(data) == {"in_channels": 1, "num_classes": 10}
    assert task.to_dict(data)["quality_metric"] == "accuracy"


def test_classification_metrics_by_hand():
    task = create_task("image-classification")
    logits = np.zeros((4, 7), np.float32)
    logits[0, 3] = 1  # right
    logits[1] = [0, 0.1, 1, 0.2, 0.3, 0.4, -1]  # wrong, but label 5 is in its top 5
    logits[2, :] = np.arange(7)  # label 0 is the lowest: not in the top 5
    logits[3, 6] = 1  # right
    labels = np.array([3, 5, 0, 6])
    m = task.metrics(logits, labels)
    assert m["accuracy"] == 0.5
    assert m["top5_accuracy"] == 0.75
    assert set(m) == {"accuracy", "top5_accuracy"}
    assert set(task.metrics(logits[:, :5], labels % 5)) == {"accuracy"}  # no top-5 with 5 classes


def test_augment_is_the_shift_of_the_view_when_cached(digits):
    from edgekd.data.datasets import view_shift

    task, data = digits
    x, idx = data.x_train[:8], torch.arange(8)
    got = task.augment(x, idx, shift=1, seed=3, generator=torch.Generator(), view=2)
    assert torch.equal(got, view_shift(x, idx, 2, 1, 3))
    assert torch.equal(task.augment(x, idx, shift=0, seed=3, generator=torch.Generator()), x)


def test_unknown_task_suggests_the_nearest():
    assert "image-classification" in list_tasks()
    with pytest.raises(UnknownNameError, match="did you mean 'image-classification'"):
        create_task("image-clasification")
