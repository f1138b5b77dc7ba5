"""Shared fixtures: the digits data and a small trained float/int8 student, exported once."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("EDGEKD_PROGRESS", "0")


@pytest.fixture(scope="session")
def digits():
    from edgekd.data import DataConfig, load_data

    return load_data(DataConfig())


@pytest.fixture(scope="session")
def float_student(digits):
    """cnn-student-s trained briefly from labels: accurate enough that parity numbers mean something."""
    from edgekd.distill import TrainConfig, train_scratch
    from edgekd.models import create_model

    torch.manual_seed(0)
    model = create_model("cnn-student-s")
    train_scratch(model, digits, TrainConfig(epochs=8), augment_shift=1)
    return model.eval()


@pytest.fixture(scope="session")
def int8_student(digits, float_student):
    from edgekd.quant import QATConfig, calibrate, freeze, prepare_qat

    model = prepare_qat(float_student, QATConfig())
    calibrate(model, [digits.x_train[i:i + 64] for i in range(0, 512, 64)])
    return freeze(model)


@pytest.fixture(scope="session")
def exported(tmp_path_factory, digits, float_student, int8_student):
    """{(stage, format): Artifact} for the float and int8 student in every registered format."""
    from edgekd.export import export, list_exporters

    out = tmp_path_factory.mktemp("exported")
    artifacts = {}
    for stage, model in (("float", float_student), ("int8", int8_student)):
        for artifact in export(model, list_exporters(), out, f"student-{stage}", digits.input_shape):
            artifacts[(stage, artifact.format)] = artifact
    return artifacts
