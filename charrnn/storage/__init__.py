"""Models on disk: the checkpoint format, atomic writes, and the exported folder
(safetensors, JSON, ONNX)."""
