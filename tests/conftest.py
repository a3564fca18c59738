"""Suite-wide set-up.

Ultralytics replaces ``PIL.Image.open`` when it is first imported (a HEIF hook that asks to
pip-install a plug-in for any file Pillow cannot read). ``compress`` always imports it
through :func:`compress.offline.import_ultralytics`, which keeps Pillow's own function; do
the same here, before any test module's ``pytest.importorskip("ultralytics")`` can import it
the plain way and leave the patch in place for every later test of this process.
"""

import importlib.util

import pytest
import torch

if importlib.util.find_spec("ultralytics") is not None:
    from compress.offline import import_ultralytics

    import_ultralytics()


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module's tests (2 shared cores: more threads only contend)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
