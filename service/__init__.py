"""The Striate inference service: FastAPI on onnxruntime. Nothing here imports torch."""
