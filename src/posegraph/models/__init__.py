"""The model catalogue, its checkpoints, the networks and running them (ONNX, PyTorch)."""
