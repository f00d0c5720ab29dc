"""The YOLOv5 network, its configs, the safe checkpoint reader and the weights lookup (PyTorch)."""
