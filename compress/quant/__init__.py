"""int8 quantization that still detects: the pieces behind the ``quantize.*`` passes.

- ``calib_reader``: calibration images -> preprocessed tensors (and ORT's data reader)
- ``head``: which ONNX nodes form a detector's decode tail and must stay float
- ``safety``: CPU int8 features and the overflow-safe setting (reduce_range)
- ``qdq``: ONNX helpers (already quantized?, weight folding, atomic save with metadata)
- ``drift``: per-layer fp32-vs-int8 activation error (``diagnose_drift``)
- ``backends``: onnxruntime, nncf and torch.ao implementations of static int8

Nothing here imports onnxruntime.quantization, nncf or torch.ao at package import.
"""
