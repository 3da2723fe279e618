"""Learned-codec models: content-addressed registry (:mod:`.registry`), ONNX Runtime sessions
(:mod:`.runtime`), shared numpy pre/post-processing (:mod:`.prep`) and the built-in packages (``builtin/``)."""
