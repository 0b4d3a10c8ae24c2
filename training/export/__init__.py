"""Export to an ONNX bundle: model.onnx, explain.onnx (Grad-CAM in the graph), manifest.json."""

from .api import export_checkpoint, export_model

__all__ = ["export_checkpoint", "export_model"]
