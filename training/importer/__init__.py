"""Import a foreign ONNX image classifier as a bundle: classify, features, and explanations.

`import_onnx` (api.py) is the entry point; `striate import` is its command line.
"""

from .api import CheckResult, import_onnx

__all__ = ["CheckResult", "import_onnx"]
