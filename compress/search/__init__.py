"""Latency-targeted compression search: the per-layer latency table and the search loop.

Names are imported lazily (``from compress.search import LatencyTable``), so importing the
package costs nothing; append new names to ``_LAZY``.
"""

from __future__ import annotations

import importlib

_LAZY = {  # name -> module that defines it
    "LatencyTable": "compress.search.latency_table",
    "build_table": "compress.search.latency_table",
    "cached_table": "compress.search.latency_table",
    "search": "compress.search.search",
    "SearchConfig": "compress.search.config",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'compress.search' has no attribute {name!r}")
