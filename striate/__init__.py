"""Striate: train a CNN, export it to an ONNX bundle, serve it over HTTP."""

__version__ = "0.1.0"
