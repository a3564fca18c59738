"""Metrics: detection mAP and agreement, classification agreement, model size.

Submodules are imported where used (``compress.metrics.detection`` pulls in the
COCO evaluator), so importing this package stays light.
"""
