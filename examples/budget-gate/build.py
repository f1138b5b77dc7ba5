"""Build this example's model: the digits student, quantized to int8 by calibration (PTQ), exported
to ONNX, OpenVINO IR and TFLite in ./artifacts. A stand-in for your project's own export step."""

import sys
from pathlib import Path

import torch

from edgekd.data import DataConfig, load_data
from edgekd.export import export
from edgekd.models import create_model
from edgekd.quant import QATConfig
from edgekd.quant.ptq import PTQConfig, post_training_quantize

out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "artifacts")
data = load_data(DataConfig())
torch.manual_seed(0)
model = create_model(sys.argv[2] if len(sys.argv) > 2 else "cnn-student-s").eval()
int8 = post_training_quantize(model, data.calibration_batches(64, 4), PTQConfig(enabled=True, observer="minmax"),
                              QATConfig(target="x86-cpu"))
for artifact in export(int8, ["onnx", "openvino", "tflite"], out, "student-int8", data.input_shape):
    print(artifact.path)
