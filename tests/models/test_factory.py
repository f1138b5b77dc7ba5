"""edgekd.models.factory: the model registry, user ``module:callable`` models and checkpoints."""

from __future__ import annotations

import itertools
import pickle
import sys
import textwrap

import pytest
import torch
from torch import nn

from edgekd.errors import ConfigError, ModelLoadError
from edgekd.models import ModelSpec, create_model, list_models, load_checkpoint, save_checkpoint
from edgekd.models.factory import read_checkpoint


class NotAWeight:
    """A custom class: a checkpoint that pickles one must be refused by weights_only loading."""

    def __init__(self):
        self.value = 42


_module_ids = itertools.count()


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write a Python module into tmp_path, importable by the returned (unique) name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str) -> str:
        name = f"edgekd_user_models_{next(_module_ids)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.delitem(sys.modules, name, raising=False)  # removed again after the test
        return name

    return write


USER_MODELS = """
    from torch import nn

    def with_params(in_channels, num_classes, hidden=4):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, hidden), nn.Linear(hidden, num_classes))

    def fixed():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))

    def any_kwargs(**kwargs):
        m = nn.Sequential(nn.Flatten(), nn.Linear(kwargs["in_channels"] * 64, kwargs["num_classes"]))
        m.seen = dict(kwargs)
        return m

    def not_a_module(in_channels, num_classes):
        return [in_channels, num_classes]

    NOT_CALLABLE = 3
"""


def randomize_batchnorm(model: nn.Module) -> None:
    """Give BatchNorm layers non-default statistics so a checkpoint round trip is meaningful."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


# --- registry ---------------------------------------------------------------------------------

def test_list_models_has_the_builtins():
    assert {"cnn-teacher", "cnn-student-m", "cnn-student-s", "cnn-student-xs"} <= set(list_models())
    assert list_models() == sorted(list_models())


# det-*: tests/models/test_detector.py; text encoders (bert-student, minilm-l6-v2): tests/models/test_bert.py
CLASSIFIERS = [a for a in list_models() if not a.startswith(("det-", "bert-", "minilm-"))]


@pytest.mark.parametrize("arch", CLASSIFIERS)
def test_every_registered_model_builds_and_classifies_digits(arch):
    torch.manual_seed(0)
    model = create_model(arch).eval()
    out = model(torch.rand(2, 1, 8, 8))
    assert out.shape == (2, 10)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_in_channels_and_num_classes_are_passed():
    model = create_model("cnn-student-s", in_channels=3, num_classes=4).eval()
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 4)


def test_spec_kwargs_are_passed():
    model = create_model(ModelSpec(arch="cnn-teacher", kwargs={"dropout": 0.5}))
    assert model.dropout.p == 0.5
    with pytest.raises(ConfigError, match=r"^model 'cnn-teacher': bad arguments .*'no_such_arg'"):
        create_model(ModelSpec(arch="cnn-teacher", kwargs={"no_such_arg": 1}))


def test_unknown_arch_suggests_the_nearest_name():
    with pytest.raises(ConfigError) as info:
        create_model("cnn-studnet-xs")
    assert str(info.value) == (
        "arch: unknown model 'cnn-studnet-xs'; did you mean 'cnn-student-xs'?; valid models: "
        "bert-student, cnn-student-m, cnn-student-s, cnn-student-xs, cnn-teacher, cnn-teacher-half, det-student, "
        "det-teacher, minilm-l6-v2, mobilenetv2, mobilenetv2-050 "
        "(or write package.module:callable)")


def test_unknown_arch_in_spec_dict_names_the_field():
    with pytest.raises(ConfigError, match=r"^<dict>: arch: unknown model 'cnn-techer'; did you mean 'cnn-teacher'\?"):
        ModelSpec.from_dict({"arch": "cnn-techer"})


# --- user models ------------------------------------------------------------------------------

def test_user_model_gets_in_channels_and_num_classes(user_module):
    name = user_module(USER_MODELS)
    model = create_model(ModelSpec(arch=f"{name}:with_params", kwargs={"hidden": 7}), in_channels=2, num_classes=5)
    assert model[1].in_features == 2 * 64 and model[1].out_features == 7
    assert model(torch.rand(3, 2, 8, 8)).shape == (3, 5)


def test_user_model_without_those_parameters(user_module):
    name = user_module(USER_MODELS)
    model = create_model(f"{name}:fixed", in_channels=1, num_classes=10)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 3)  # the callable decides; nothing is forced on it


def test_user_model_with_var_kwargs_receives_both(user_module):
    name = user_module(USER_MODELS)
    model = create_model(f"{name}:any_kwargs", in_channels=2, num_classes=6)
    assert model.seen == {"in_channels": 2, "num_classes": 6}


def test_user_model_module_not_importable():
    with pytest.raises(ConfigError, match=r"^model 'edgekd_no_such_module_xyz:build': cannot import module "
                                          r"'edgekd_no_such_module_xyz' .*is it installed or on PYTHONPATH\?"):
        create_model("edgekd_no_such_module_xyz:build")


@pytest.mark.parametrize("attr", ["missing", "NOT_CALLABLE"])
def test_user_model_missing_or_not_callable(user_module, attr):
    name = user_module(USER_MODELS)
    with pytest.raises(ConfigError) as info:
        create_model(f"{name}:{attr}")
    assert str(info.value) == f"model '{name}:{attr}': module '{name}' has no callable '{attr}'"


def test_user_model_returning_non_module(user_module):
    name = user_module(USER_MODELS)
    with pytest.raises(ConfigError) as info:
        create_model(f"{name}:not_a_module")
    assert str(info.value) == f"model '{name}:not_a_module' returned list, not a torch.nn.Module"


# --- checkpoints ------------------------------------------------------------------------------

def save_student(path, arch="cnn-student-s"):
    torch.manual_seed(0)
    model = create_model(arch)
    randomize_batchnorm(model)
    model.eval()
    save_checkpoint(path, model, ModelSpec(arch=arch), in_channels=1, num_classes=10,
                    input_shape=(1, 8, 8), extra={"note": "hi"})
    return model


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    path = tmp_path / "s.pt"
    model = save_student(path)
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert meta["model"] == {"arch": "cnn-student-s", "kwargs": {}, "checkpoint": None,
                             "in_channels": 1, "num_classes": 10}
    assert meta["input_shape"] == [1, 8, 8]
    assert meta["extra"] == {"note": "hi"}
    assert "state_dict" not in meta


def test_checkpoint_save_leaves_no_temporary_files(tmp_path):
    save_student(tmp_path / "s.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]


def test_missing_checkpoint(tmp_path):
    path = tmp_path / "none.pt"
    with pytest.raises(ModelLoadError, match=f"^{path}: checkpoint not found$"):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "s.pt"
    save_student(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelLoadError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: not a readable checkpoint, the file is truncated or corrupt (")


def test_random_bytes_checkpoint(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(ModelLoadError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: not a readable checkpoint, the file is truncated or corrupt")


def test_plain_tensor_is_not_an_edgekd_checkpoint(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ModelLoadError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"{path}: not an edgekd checkpoint (no format='edgekd-checkpoint'); "
                               f"save models with edgekd.models.save_checkpoint")


def test_plain_state_dict_is_not_an_edgekd_checkpoint(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(create_model("cnn-student-xs").state_dict(), path)
    with pytest.raises(ModelLoadError, match="not an edgekd checkpoint"):
        read_checkpoint(path)


REFUSED = ("{path}: refused to load: the file contains a Python object (" + NotAWeight.__module__ +
           ".NotAWeight) that would run code when loaded, not only tensors and plain data; edgekd loads checkpoints with "
           "weights_only=True and never runs code from them")


def test_checkpoint_with_custom_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "edgekd-checkpoint", "version": 1, "payload": NotAWeight()}, path)
    assert torch.load(path, weights_only=False)["payload"].value == 42  # loadable only unsafely
    with pytest.raises(ModelLoadError) as info:
        load_checkpoint(path)
    assert str(info.value) == REFUSED.format(path=path)
    assert "weights_only=False" not in str(info.value)  # torch's unsafe advice is not relayed


def test_plain_pickle_of_custom_object_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(NotAWeight(), protocol=2))
    with pytest.raises(ModelLoadError) as info:
        load_checkpoint(path)
    assert str(info.value) == REFUSED.format(path=path)


def test_newer_checkpoint_version_is_refused(tmp_path):
    path = tmp_path / "new.pt"
    torch.save({"format": "edgekd-checkpoint", "version": 2}, path)
    with pytest.raises(ModelLoadError, match=r"checkpoint version 2 is newer than this edgekd supports \(1\)"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    path = tmp_path / "mismatch.pt"
    model = create_model("cnn-student-xs")
    save_checkpoint(path, model, ModelSpec(arch="cnn-student-s"), in_channels=1, num_classes=10,
                    input_shape=(1, 8, 8))
    with pytest.raises(ModelLoadError, match=f"^{path}: weights do not fit architecture 'cnn-student-s': "):
        load_checkpoint(path)


def test_student_initialised_from_every_other_teacher_block():
    import torch

    from edgekd.errors import ConfigError
    from edgekd.models import create_model
    from edgekd.models.transfer import init_from_teacher

    torch.manual_seed(0)
    teacher, student = create_model("cnn-teacher"), create_model("cnn-teacher-half")
    report = init_from_teacher(student, teacher)
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["features.block0.conv.weight"], t["features.block0.conv.weight"])
    assert torch.equal(s["features.block1.conv.weight"], t["features.block2.conv.weight"])
    assert torch.equal(s["features.block1.bn.running_var"], t["features.block2.bn.running_var"])
    assert torch.equal(s["classifier.weight"], t["classifier.weight"])
    assert report["kept"] == []
    with pytest.raises(ConfigError, match=r"student features.block0.conv.weight \(16, 1, 3, 3\) cannot take"):
        init_from_teacher(create_model("cnn-student-s"), teacher)
