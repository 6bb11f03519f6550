"""Offline stage of edge-run: model graph builders, quantization, engine building, manifest."""
