"""Exporters, registered by format name and imported lazily.

Every format is produced from the ONNX graph (the one PyTorch export), so the scales learned in
QAT reach every runtime unchanged: ``onnx`` exports the torch model, the others convert that ONNX.
"""

from edgekd.export.api import EXPORTERS, Artifact, export, export_onnx_file, list_exporters

__all__ = ["EXPORTERS", "Artifact", "export", "export_onnx_file", "list_exporters"]
