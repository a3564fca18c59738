"""Importing ultralytics must not change how our loaders treat a corrupt image.

Runs in a fresh interpreter: in this process ultralytics is already imported (conftest.py).
"""

import subprocess
import sys

import pytest

SCRIPT = """
import sys, warnings
from PIL import Image
from compress.data.folder import load_folder
from compress.errors import DataError
from compress.offline import import_ultralytics

before = Image.open
import_ultralytics()
assert "ultralytics" in sys.modules
assert Image.open is before, "ultralytics' PIL patch left in place"
open(sys.argv[1] + "/x.png", "wb").write(b"not a png")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        load_folder(sys.argv[1])
    except DataError as e:
        assert "none of the 1 images could be read" in str(e), e
    else:
        raise AssertionError("a folder of one corrupt image loaded")
text = " ".join(str(w.message) for w in caught)
assert "x.png" in text and "heif" not in text.lower(), text
print("ok")
"""


@pytest.mark.yolo
def test_corrupt_image_still_skipped_after_ultralytics_import(tmp_path):
    pytest.importorskip("ultralytics")
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
