"""Training of the learned mode (optional extra ``[train]``: torch, onnx).

Never imported by compression or decompression: the codec runs the exported ONNX graphs
(:mod:`necoda_filter.models.runtime`).
"""
