"""Importing ultralytics must not change how our loaders treat a corrupt image."""

import pytest

from compress.errors import DataError


@pytest.mark.yolo
def test_corrupt_image_still_skipped_after_ultralytics_import(tmp_path):
    pytest.importorskip("ultralytics")
    from PIL import Image

    from compress.data.folder import load_folder
    from compress.offline import import_ultralytics

    before = Image.open
    import_ultralytics()
    assert Image.open is before
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="none of the 1 images could be read"):
        load_folder(tmp_path)
