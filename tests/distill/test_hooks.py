"""Feature taps: module paths with or without DDP's prefix, wrappers, fx-traced (int8) students."""

import pytest
import torch

from edgekd.distill.hooks import FeatureTaps, resolve, strip_ddp
from edgekd.errors import ConfigError
from edgekd.models import create_model
from edgekd.quant import QATConfig, prepare_qat


class Wrapper(torch.nn.Module):  # shaped like DistributedDataParallel: the model under .module
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


Wrapper.__name__ = "DistributedDataParallel"


def test_paths_with_and_without_module_prefix_resolve_to_the_same_module():
    model = create_model("cnn-student-s")
    assert strip_ddp("module.features.block1") == "features.block1"
    assert resolve(model, "module.features.block1")[1] is resolve(model, "features.block1")[1]
    wrapped = Wrapper(model)
    taps = FeatureTaps(wrapped, ["module.features.block1", "features.block2"])
    wrapped(torch.randn(2, 1, 8, 8))
    out = taps.collect()
    assert out["module.features.block1"].shape == (2, 24, 8, 8) and out["features.block2"].shape == (2, 32, 4, 4)


def test_container_path_on_traced_int8_student_follows_its_last_node():
    q = prepare_qat(create_model("cnn-student-s"), QATConfig())
    name, _ = resolve(q, "features.block1")
    assert name.startswith("features.block1.") and name != "features.block1"
    taps = FeatureTaps(q, ["features.block1"])
    q(torch.randn(2, 1, 8, 8))
    assert taps.collect()["features.block1"].shape == (2, 24, 8, 8)


def test_taps_are_removed_and_unknown_paths_suggest():
    model = create_model("cnn-student-s")
    with FeatureTaps(model, ["features.block0"]) as taps:
        pass
    model(torch.randn(1, 1, 8, 8))
    assert taps.outputs == {}
    with pytest.raises(ConfigError, match="did you mean 'features.block0'"):
        resolve(model, "features.blck0")
