"""Detection data: the built-in digits-detect canvases and .npz files with boxes."""

import numpy as np
import pytest
import torch

from edgekd.data.datasets import DataConfig
from edgekd.data.detection import load_detection_data
from edgekd.errors import DataError


@pytest.fixture(scope="module")
def splits():
    return load_detection_data(DataConfig(source="digits-detect"))


def test_builtin_canvases_hold_one_to_three_boxed_digits(splits):
    assert splits.x_train.shape == (1200, 1, 32, 32) and splits.y_train.shape == (1200, 3, 5)
    assert len(splits.y_val) == len(splits.y_test) == 400 and splits.num_classes == 10
    for x, y in ((splits.x_train, splits.y_train), (splits.x_test, splits.y_test)):
        real = y[..., 0] >= 0
        assert real.any(1).all() and real.sum() > len(y) * 1.5  # every image labelled, ~2 digits each
        rows = y[real]
        assert (rows[:, 1:3] >= 0).all() and (rows[:, 3:] <= 32).all()
        assert ((rows[:, 3] - rows[:, 1]) == (rows[:, 4] - rows[:, 2])).all()  # square, 8..16 px
        assert rows[:, 3].sub(rows[:, 1]).min() >= 8 and rows[:, 3].sub(rows[:, 1]).max() <= 16
    ink_inside = outside = 0.0
    for img, rows in zip(splits.x_train[:100], splits.y_train[:100]):
        mask = torch.zeros(32, 32, dtype=torch.bool)
        for c, x1, y1, x2, y2 in rows.tolist():
            if c >= 0:
                mask[y1:y2, x1:x2] = True
        ink_inside += img[0][mask].sum().item()
        outside += img[0][~mask].sum().item()
    assert outside == 0.0 and ink_inside > 0  # every stroke lies inside a box


def test_the_same_seed_gives_the_same_canvases_and_another_seed_others(splits):
    again = load_detection_data(DataConfig(source="digits-detect"))
    assert again.fingerprint == splits.fingerprint and torch.equal(again.y_test, splits.y_test)
    other = load_detection_data(DataConfig(source="digits-detect", seed=1))
    assert other.fingerprint != splits.fingerprint


def test_larger_canvases_scale_the_digits():
    big = load_detection_data(DataConfig(source="digits-detect", image_size=[64, 48]))
    assert big.x_train.shape[1:] == (1, 64, 48)
    rows = big.y_train[big.y_train[..., 0] >= 0]
    sides = rows[:, 3] - rows[:, 1]
    assert sides.min() >= 12 and sides.max() <= 24 and (rows[:, 3] <= 48).all() and (rows[:, 4] <= 64).all()
    with pytest.raises(DataError, match="at least 16 pixels"):
        load_detection_data(DataConfig(source="digits-detect", image_size=[8, 8]))


def test_labelled_fraction_hides_whole_images(splits):
    part = load_detection_data(DataConfig(source="digits-detect", labelled_fraction=0.25))
    visible = part.visible_train_labels()
    labelled = (visible[..., 0] >= 0).any(1)
    assert labelled.sum() == 300 and (visible[~labelled] == -1).all()
    assert torch.equal(visible[labelled], part.y_train[labelled])


def _npz(tmp_path, y, x=None, **extra):
    path = tmp_path / "boxes.npz"
    np.savez(path, x=np.zeros((len(y), 16, 16), np.uint8) if x is None else x, y=np.asarray(y), **extra)
    return str(path)


def test_npz_boxes_are_split_and_named(tmp_path):
    y = np.full((10, 2, 5), -1)
    y[:, 0] = [[i % 3, 0, 0, 4, 4] for i in range(10)]
    data = load_detection_data(DataConfig(source=_npz(tmp_path, y, names=np.array(["a", "b", "c", "d"]))))
    assert data.class_names == ["a", "b", "c", "d"] and len(data.y_train) + len(data.y_val) + len(data.y_test) == 10


@pytest.mark.parametrize("y, match", [
    (np.zeros((4, 5)), "detection boxes are \\(N, M, 5\\)"),
    ([[[0, 0, 0, 20, 4]]] * 4, "image 0 has box \\[0, 0, 20, 4\\], outside the 16x16 image"),
    ([[[0, 4, 4, 4, 8]]] * 4, "or empty"),
    ([[[-1, -1, -1, -1, -1]]] * 4, "no boxes"),
])
def test_bad_boxes_are_refused_with_the_image_named(tmp_path, y, match):
    with pytest.raises(DataError, match=match):
        load_detection_data(DataConfig(source=_npz(tmp_path, y)))


def test_classification_data_is_not_detection_data():
    with pytest.raises(DataError, match="digits-detect"):
        load_detection_data(DataConfig(source="digits"))
