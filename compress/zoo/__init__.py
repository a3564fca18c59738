"""The model zoo: training scripts for the built-in models and their committed weights (``weights/``)."""
