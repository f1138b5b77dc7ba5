"""edgekd.data.datasets: digits, .npz files, image folders, stratified seeded splits, random_shift."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from edgekd.data import DataConfig, load_data
from edgekd.data.datasets import random_shift
from edgekd.errors import DataError


def save_npz(path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def indexed_npz(tmp_path, per_class=(25, 25, 25, 25)) -> tuple[str, np.ndarray]:
    """A float dataset whose pixel [0, 0, 0] of sample i is i, so split members can be identified."""
    y = np.concatenate([np.full(n, c) for c, n in enumerate(per_class)]).astype(np.int64)
    x = np.zeros((len(y), 1, 2, 2), np.float32)
    x[:, 0, 0, 0] = np.arange(len(y))
    return save_npz(tmp_path / "indexed.npz", x=x, y=y), y


def member_ids(x: torch.Tensor) -> np.ndarray:
    return x[:, 0, 0, 0].numpy().astype(np.int64)


# --- digits -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig())


def test_digits_sizes_shape_and_range(digits):
    sizes = [len(digits.x_train), len(digits.x_val), len(digits.x_test)]
    assert sizes == [1078, 359, 360]
    assert sum(sizes) == 1797
    assert [len(digits.y_train), len(digits.y_val), len(digits.y_test)] == sizes
    assert digits.num_classes == 10
    assert digits.class_names == [str(i) for i in range(10)]
    assert digits.input_shape == (1, 8, 8)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    for x in (digits.x_train, digits.x_val, digits.x_test):
        assert x.min().item() == 0.0 and x.max().item() == 1.0


def test_digits_every_class_in_every_split(digits):
    for y in (digits.y_train, digits.y_val, digits.y_test):
        assert sorted(torch.unique(y).tolist()) == list(range(10))


def test_same_seed_same_split_and_fingerprint(digits):
    again = load_data(DataConfig(seed=0))
    assert again.fingerprint == digits.fingerprint
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(again, name), getattr(digits, name))


def test_different_seed_different_split_and_fingerprint(digits):
    other = load_data(DataConfig(seed=1))
    assert other.fingerprint != digits.fingerprint
    assert len(other.x_train) == len(digits.x_train)  # same class counts, other members
    assert not torch.equal(other.x_train, digits.x_train)
    assert not torch.equal(other.y_test, digits.y_test)


# --- split ------------------------------------------------------------------------------------

def test_splits_are_disjoint_and_cover_the_data(tmp_path):
    path, y = indexed_npz(tmp_path)
    d = load_data(DataConfig(source=path))
    train, val, test = member_ids(d.x_train), member_ids(d.x_val), member_ids(d.x_test)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(len(y)))
    for ids, labels in ((train, d.y_train), (val, d.y_val), (test, d.y_test)):
        assert labels.tolist() == y[ids].tolist()  # each x keeps its own label


def test_split_is_stratified_with_exact_class_counts(tmp_path):
    path, _ = indexed_npz(tmp_path, per_class=(25, 25, 40, 10))
    d = load_data(DataConfig(source=path, split=[0.6, 0.2, 0.2]))
    expected = {"train": [15, 15, 24, 6], "val": [5, 5, 8, 2], "test": [5, 5, 8, 2]}
    for name, y in (("train", d.y_train), ("val", d.y_val), ("test", d.y_test)):
        assert torch.bincount(y, minlength=4).tolist() == expected[name]


def test_fingerprint_changes_with_the_data(tmp_path):
    path, y = indexed_npz(tmp_path)
    first = load_data(DataConfig(source=path)).fingerprint
    x = np.zeros((len(y), 1, 2, 2), np.float32)
    x[:, 0, 0, 0] = np.arange(len(y))
    x[0, 0, 1, 1] = 0.5
    changed = save_npz(tmp_path / "changed.npz", x=x, y=y)
    assert load_data(DataConfig(source=changed)).fingerprint != first


def test_split_too_small_for_a_part(tmp_path):
    path = save_npz(tmp_path / "tiny.npz", x=np.zeros((2, 4, 4), np.float32), y=np.array([0, 1]))
    with pytest.raises(DataError, match=r"the val split is empty \(2 samples"):
        load_data(DataConfig(source=path))


# --- npz layouts ------------------------------------------------------------------------------

def test_npz_nhw_uint8_is_scaled_and_gets_a_channel(tmp_path):
    pattern = (np.arange(48).reshape(6, 8) * 5).astype(np.uint8)  # values 0..235
    x = np.repeat(pattern[None], 20, axis=0)
    path = save_npz(tmp_path / "nhw.npz", x=x, y=np.arange(20) % 2)
    d = load_data(DataConfig(source=path))
    assert d.input_shape == (1, 6, 8)
    assert d.num_classes == 2
    expected = torch.from_numpy(pattern.astype(np.float32) / 255.0)
    for img in torch.cat([d.x_train, d.x_val, d.x_test]):
        assert torch.equal(img[0], expected)


def test_npz_nchw_float_is_used_as_is(tmp_path):
    pattern = np.linspace(-2.0, 3.0, 3 * 5 * 6, dtype=np.float32).reshape(3, 5, 6)
    x = np.repeat(pattern[None], 20, axis=0)
    path = save_npz(tmp_path / "nchw.npz", x=x, y=np.arange(20) % 2)
    d = load_data(DataConfig(source=path))
    assert d.input_shape == (3, 5, 6)
    assert torch.equal(d.x_train[0], torch.from_numpy(pattern))


def test_npz_nhwc_uint8_is_transposed_and_scaled(tmp_path):
    pattern = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)  # (H, W, C)
    x = np.repeat(pattern[None], 20, axis=0)
    path = save_npz(tmp_path / "nhwc.npz", x=x, y=np.arange(20) % 2)
    d = load_data(DataConfig(source=path))
    assert d.input_shape == (3, 5, 6)
    expected = torch.from_numpy(pattern.transpose(2, 0, 1).astype(np.float32) / 255.0)
    for img in d.x_test:
        assert torch.equal(img, expected)


def test_npz_float_labels_with_integer_values_are_accepted(tmp_path):
    path = save_npz(tmp_path / "f.npz", x=np.zeros((20, 4, 4), np.float32), y=(np.arange(20) % 2).astype(np.float64))
    d = load_data(DataConfig(source=path))
    assert d.y_train.dtype == torch.int64
    assert d.num_classes == 2


def test_npz_label_gaps_are_refused_not_empty_classes(tmp_path):
    # labels {0, 3} would give four classes, two of them empty: refused, with the remapping named
    path = save_npz(tmp_path / "gap.npz", x=np.zeros((20, 4, 4), np.float32), y=np.arange(20) % 2 * 3)
    with pytest.raises(DataError, match=r"classes 1, 2 have no sample.*np.unique\(y, return_inverse=True\)"):
        load_data(DataConfig(source=path))


# --- errors -----------------------------------------------------------------------------------

def load_error(source: str) -> str:
    with pytest.raises(DataError) as info:
        load_data(DataConfig(source=source))
    return str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.npz"
    msg = load_error(str(path))
    assert msg.startswith(f"{path}: data source not found")


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("1,2,3\n")
    assert load_error(str(path)).startswith(f"{path}: unsupported data file type '.csv'")


def test_npz_without_y(tmp_path):
    path = save_npz(tmp_path / "noy.npz", x=np.zeros((4, 8, 8), np.float32))
    assert load_error(path).startswith(f"{path}: missing array(s) y; found x.")


def test_npz_with_other_arrays_lists_them(tmp_path):
    path = save_npz(tmp_path / "wrong.npz", images=np.zeros((4, 8, 8)), labels=np.zeros(4))
    assert load_error(path).startswith(f"{path}: missing array(s) x, y; found images, labels.")


def test_npz_length_mismatch(tmp_path):
    path = save_npz(tmp_path / "len.npz", x=np.zeros((20, 8, 8), np.float32), y=np.arange(19) % 2)
    assert load_error(path) == f"{path}: y has shape (19,) but x has 20 samples; expected y of shape (20,)"


def test_npz_bad_x_shape(tmp_path):
    path = save_npz(tmp_path / "2d.npz", x=np.zeros((20, 64), np.float32), y=np.arange(20) % 2)
    assert load_error(path) == f"{path}: x has shape (20, 64); expected (N,H,W), (N,C,H,W) or (N,H,W,C)"


def test_npz_negative_label_is_out_of_range(tmp_path):
    # num_classes is max(y)+1, so only labels below 0 can be out of range for a .npz
    path = save_npz(tmp_path / "neg.npz", x=np.zeros((20, 8, 8), np.float32), y=np.arange(20) % 3 - 1)
    assert load_error(path) == f"{path}: labels must be in 0..1, found -1..1"


def test_npz_single_class(tmp_path):
    path = save_npz(tmp_path / "one.npz", x=np.zeros((20, 8, 8), np.float32), y=np.zeros(20, np.int64))
    assert load_error(path) == f"{path}: only one class (0) present; classification needs >= 2"


def test_npz_empty(tmp_path):
    path = save_npz(tmp_path / "empty.npz", x=np.zeros((0, 8, 8), np.float32), y=np.zeros(0, np.int64))
    assert load_error(path) == f"{path}: the dataset is empty"


@pytest.mark.parametrize("labels", [np.array([0.0, 1.5] * 10), np.array([0.0, np.nan] * 10)])
def test_npz_non_integer_float_labels(tmp_path, labels):
    path = save_npz(tmp_path / "float.npz", x=np.zeros((20, 8, 8), np.float32), y=labels)
    assert load_error(path) == f"{path}: y has dtype float64; expected integer class labels 0..K-1"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_npz_non_finite_x(tmp_path, bad):
    x = np.zeros((20, 8, 8), np.float32)
    x[3, 2, 1] = bad
    path = save_npz(tmp_path / "nan.npz", x=x, y=np.arange(20) % 2)
    assert load_error(path) == f"{path}: x contains NaN or infinite values"


def test_npz_string_x(tmp_path):
    path = save_npz(tmp_path / "str.npz", x=np.array([["a"] * 4] * 20), y=np.arange(20) % 2)
    assert load_error(path).startswith(f"{path}: x has dtype <U1; expected uint8 or float images")


def test_corrupt_npz(tmp_path):
    path = tmp_path / "corrupt.npz"
    path.write_bytes(bytes(range(256)) * 8)
    message = load_error(str(path))
    assert message.startswith(f"{path}: not a readable .npz file: truncated, corrupt")
    assert "allow_pickle" not in message and "unsafe" not in message  # never advise unsafe loading


def test_truncated_npz(tmp_path):
    good = save_npz(tmp_path / "good.npz", x=np.zeros((20, 4, 4), np.uint8), y=np.arange(20) % 2)
    path = tmp_path / "cut.npz"
    path.write_bytes(open(good, "rb").read()[:100])
    assert load_error(str(path)).startswith(f"{path}: not a readable .npz file")


# --- image folders ----------------------------------------------------------------------------

def make_image_folder(root, sizes=None, mode="L", per_class=5):
    """root/cat/*.png filled with 51, root/dog/*.png filled with 204; sizes: (w, h) per image."""
    for cls, fill in (("cat", 51), ("dog", 204)):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            size = sizes[i] if sizes else (8, 8)
            color = fill if mode == "L" else (fill, 0, 255)
            Image.new(mode, size, color).save(root / cls / f"{i}.png")
    return root


def all_xy(d):
    return torch.cat([d.x_train, d.x_val, d.x_test]), torch.cat([d.y_train, d.y_val, d.y_test])


def test_image_folder_grayscale(tmp_path):
    root = make_image_folder(tmp_path / "imgs")
    d = load_data(DataConfig(source=str(root)))
    assert d.class_names == ["cat", "dog"]
    assert d.input_shape == (1, 8, 8)
    x, y = all_xy(d)
    assert len(x) == 10
    assert torch.bincount(y).tolist() == [5, 5]
    assert torch.equal(x[y == 0], torch.full((5, 1, 8, 8), 51 / 255))
    assert torch.equal(x[y == 1], torch.full((5, 1, 8, 8), 204 / 255))


def test_image_folder_rgb_has_three_channels(tmp_path):
    root = make_image_folder(tmp_path / "rgb", mode="RGB")
    d = load_data(DataConfig(source=str(root)))
    assert d.input_shape == (3, 8, 8)
    x, y = all_xy(d)
    expected = torch.tensor([204 / 255, 0.0, 1.0])[:, None, None].expand(3, 8, 8)
    assert all(torch.equal(img, expected) for img in x[y == 1])


def test_image_folder_mixed_sizes_need_image_size(tmp_path):
    root = make_image_folder(tmp_path / "mixed", sizes=[(8, 8), (8, 8), (10, 6), (8, 8), (8, 8)])
    msg = load_error(str(root))
    assert msg.startswith(f"{root / 'cat' / '2.png'}: size 10x6 differs from the first image")
    assert "image_size" in msg


def test_image_folder_image_size_resizes_all(tmp_path):
    root = make_image_folder(tmp_path / "mixed", sizes=[(8, 8), (8, 8), (10, 6), (8, 8), (3, 12)])
    d = load_data(DataConfig(source=str(root), image_size=[4, 6]))
    assert d.input_shape == (1, 4, 6)
    x, y = all_xy(d)
    assert len(x) == 10
    # resizing a constant image keeps it constant
    assert torch.allclose(x[y == 0], torch.full((5, 1, 4, 6), 51 / 255))
    assert torch.allclose(x[y == 1], torch.full((5, 1, 4, 6), 204 / 255))


def test_image_folder_unreadable_image(tmp_path):
    root = make_image_folder(tmp_path / "bad")
    (root / "dog" / "9.png").write_bytes(b"not a png at all")
    assert load_error(str(root)).startswith(f"{root / 'dog' / '9.png'}: cannot read image (")


def test_image_folder_without_class_folders(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "flat" / "a.png")
    assert load_error(str(tmp_path / "flat")).startswith(f"{tmp_path / 'flat'}: no class folders found")


def test_image_folder_without_images(tmp_path):
    (tmp_path / "root" / "a").mkdir(parents=True)
    (tmp_path / "root" / "a" / "notes.txt").write_text("x")
    assert load_error(str(tmp_path / "root")).startswith(f"{tmp_path / 'root'}: no images found")


# --- random_shift -----------------------------------------------------------------------------

def shifted(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[..., i, j] = img[..., i + dy, j + dx], zero outside.  img: (C, H, W)"""
    _, h, w = img.shape
    out = torch.zeros_like(img)
    out[:, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
        img[:, max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return out


def test_shift_helper_by_hand():
    img = torch.arange(1.0, 10.0).reshape(1, 3, 3)
    assert shifted(img, 1, 0).tolist() == [[[4, 5, 6], [7, 8, 9], [0, 0, 0]]]
    assert shifted(img, 0, -1).tolist() == [[[0, 1, 2], [0, 4, 5], [0, 7, 8]]]


def test_random_shift_zero_is_identity():
    x = torch.rand(4, 1, 8, 8)
    out = random_shift(x, 0, torch.Generator().manual_seed(0))
    assert torch.equal(out, x)


@pytest.mark.parametrize("max_shift", [1, 2])
def test_random_shift_moves_each_image_by_at_most_max_shift(max_shift):
    torch.manual_seed(0)
    x = torch.rand(200, 3, 8, 7) + 0.1  # no zeros, so every shift gives a different image
    out = random_shift(x, max_shift, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    offsets = range(-max_shift, max_shift + 1)
    used = set()
    for img, res in zip(x, out):
        matches = [(dy, dx) for dy in offsets for dx in offsets if torch.equal(res, shifted(img, dy, dx))]
        assert len(matches) == 1  # every channel moved together, by one of the allowed shifts
        used.add(matches[0])
    assert len(used) == len(offsets) ** 2  # 200 draws cover all (2s+1)^2 shifts


def test_random_shift_depends_only_on_the_generator_seed():
    x = torch.rand(16, 1, 8, 8)
    a = random_shift(x, 1, torch.Generator().manual_seed(3))
    b = random_shift(x, 1, torch.Generator().manual_seed(3))
    c = random_shift(x, 1, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_transfer_set_is_scaled_like_the_data_and_unlabelled(tmp_path):
    import numpy as np

    from edgekd.data.datasets import DataConfig, load_data

    base = load_data(DataConfig())
    np.savez(tmp_path / "t.npz", x=np.full((5, 8, 8), 255, np.uint8))
    data = load_data(DataConfig(transfer=str(tmp_path / "t.npz")))
    assert len(data.y_train) == len(base.y_train) + 5 and float(data.x_train[-5:].max()) == 1.0
    assert (data.visible_train_labels()[-5:] == -1).all() and data.fingerprint != base.fingerprint
