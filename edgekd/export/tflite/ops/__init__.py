"""ONNX op converters, one module per family; importing this package registers them all."""

from edgekd.export.tflite.ops import conv, dense, elementwise, logic, normalize, pool, shape  # noqa: F401
