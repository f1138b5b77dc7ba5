"""TFLite (LiteRT) export without TensorFlow: ONNX (float or QDQ int8) -> ``.tflite``.

``graph`` reads and simplifies the ONNX model, ``context`` tracks layout and int8 scales,
``ops/`` holds one converter per ONNX op family, ``builder`` writes the flatbuffer with the
schema module ai-edge-litert ships, ``parity`` checks the result against onnxruntime.
"""

from edgekd.export.tflite.convert import (
    Conversion,
    convert,
    onnx_to_tflite,
    read_export_check,
    supported_ops,
)

__all__ = ["Conversion", "convert", "onnx_to_tflite", "read_export_check", "supported_ops"]
