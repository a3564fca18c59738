"""Ultralytics stays optional, off the network and out of the home directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, env: dict, timeout: int = 240) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _clean_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "ULTRALYTICS"))}
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path / "tmp"), OMP_NUM_THREADS="1",
               XDG_CONFIG_HOME=str(tmp_path / "home/.config"), PYTHONPATH=str(ROOT))
    (tmp_path / "home").mkdir()
    (tmp_path / "tmp").mkdir()
    return env


def test_import_compress_without_ultralytics(tmp_path):
    """`import compress` / `compress.models` (even the adapter modules) never need ultralytics."""
    out = _run("""
        import json, sys
        sys.modules["ultralytics"] = None  # as if it were not installed
        import compress, compress.models, compress.offline
        import compress.models.ultralytics, compress.models.generic
        from compress.errors import ModelLoadError
        from compress.models import load_model
        from compress.recipe import ModelSpec
        try:
            load_model(ModelSpec(builtin="yolov8n.yaml"))
            msg = None
        except ModelLoadError as e:
            msg = str(e)
        print(json.dumps({"msg": msg, "imported": [m for m in sys.modules if m.startswith("ultralytics.")]}))
    """, _clean_env(tmp_path))
    assert out["msg"] and "pip install" in out["msg"] and "ultralytics" in out["msg"]
    assert out["imported"] == []


@pytest.mark.yolo
@pytest.mark.slow
def test_build_forward_loss_export_with_network_blocked(tmp_path):
    pytest.importorskip("ultralytics")
    env = _clean_env(tmp_path)
    env["COMPRESS_TEST_ONNX"] = str(tmp_path / "m.onnx")
    out = _run("""
        import json, os, socket
        attempts = []
        def _blocked(*args, **kwargs):
            attempts.append(repr(args[:2])[:120])
            raise OSError("network disabled by the test")
        socket.getaddrinfo = socket.gethostbyname = socket.create_connection = _blocked
        socket.socket.connect = socket.socket.connect_ex = lambda self, *a: _blocked(*a)

        import numpy as np, torch
        torch.set_num_threads(1)
        from compress.models import load_model
        from compress.recipe import ModelSpec
        from compress.types import Sample
        from compress.export import export_onnx
        from compress.runtime.session import make_session, run

        adapter, model = load_model(ModelSpec(builtin="yolov8n.yaml", class_names=["a", "b"], imgsz=64))
        img = np.zeros((64, 64, 3), np.uint8)
        x, metas = adapter.preprocess([img])
        with torch.no_grad():
            y = adapter.forward(model, x)
        model.train()
        loss = adapter.loss(model, x, [Sample("s", img, np.array([[8, 8, 40, 40]], np.float32), np.array([1]))])
        model.eval()
        path = export_onnx(model, adapter, os.environ["COMPRESS_TEST_ONNX"])
        onnx_out = run(make_session(path, threads=1), x.numpy())
        from ultralytics.utils import ONLINE, SETTINGS, USER_CONFIG_DIR
        from ultralytics.utils.checks import check_font
        font = check_font("Arial.ttf")  # would otherwise ask GitHub for the font
        print(json.dumps({"attempts": attempts, "shape": list(y.shape), "loss": float(loss),
                          "onnx_diff": float(np.abs(onnx_out - y.numpy()).max()), "online": ONLINE,
                          "sync": SETTINGS["sync"], "config": str(USER_CONFIG_DIR), "font": str(font)}))
    """, env)
    assert out["attempts"] == []
    assert out["shape"] == [1, 6, 84] and np.isfinite(out["loss"])
    assert out["onnx_diff"] < 1e-3
    assert out["online"] is False and out["sync"] is False
    assert out["config"].startswith(str(tmp_path / "tmp")) and Path(out["font"]).is_file()
    assert not (tmp_path / "home" / ".config" / "Ultralytics").exists()

