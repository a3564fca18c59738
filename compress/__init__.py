"""compress: a post-training compression workbench for PyTorch vision models.

Importing the package has no side effects and pulls in no heavy optional
dependency (ultralytics, nncf); those are imported lazily where used.
"""

__version__ = "0.1.0"
