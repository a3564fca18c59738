"""Target ``ncnn``: Tencent ncnn's ``.param`` + ``.bin``, converted by pnnx from the torch model.

pnnx traces the final torch model (TorchScript) and writes the ncnn graph with fp32 weights
(``fp16=0``); the runtime runs with fp16 storage and arithmetic off, so the check compares
fp32 with fp32. int8 is not built: ncnn's int8 path needs its own calibration table
(``ncnn2table`` + ``ncnn2int8``, C++ tools not shipped in the pip packages), and the ONNX QDQ
model cannot be converted to it; the report says so.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np

from compress.deploy.base import Artifact, BuildContext, DeployError, Runner, Target

NCNN_LOAD = '''import ncnn


def load(path, threads):
    net = ncnn.Net()
    net.opt.num_threads = threads
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
    net.load_param(str(path))
    net.load_model(str(path)[: -len(".param")] + ".bin")

    def run(x):
        ex = net.create_extractor()
        ex.input(net.input_names()[0], ncnn.Mat(np.ascontiguousarray(x[0])))
        return np.array(ex.extract(net.output_names()[0])[1])[None]
    return run
'''

INT8_SKIP = ("ncnn int8 needs ncnn's own calibration table (ncnn2table + ncnn2int8, C++ tools not in the pip "
             "packages); the ONNX int8 (QDQ) model does not convert: fp32 only")


class NcnnTarget(Target):
    name = "ncnn"
    extra = "ncnn"
    packages = ("ncnn", "pnnx")
    from_torch = True

    def skip(self, artifact: Artifact) -> str | None:
        if artifact.name != "fp32":
            return INT8_SKIP
        if artifact.torch_model is None:
            return "pnnx converts from the torch model, which is not available here"
        return None

    def build(self, artifact: Artifact, out_dir: Path, ctx: BuildContext) -> list[Path]:
        import pnnx
        import torch

        model, adapter = artifact.torch_model, ctx.adapter

        class _First(torch.nn.Module):  # exactly the exported output (as compress.export does)
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, x):
                return adapter.forward(self.model, x)

        x = torch.from_numpy(ctx.example_input)
        with tempfile.TemporaryDirectory() as tmp:
            pt = Path(tmp) / "model.pt"
            was = model.training
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice: pnnx reads TorchScript
                    torch.jit.trace(_First().eval(), (x,), check_trace=False).save(str(pt))
            except Exception as e:
                raise DeployError(f"ncnn: TorchScript trace failed: {(str(e).splitlines() or [''])[0]}") from e
            finally:
                model.train(was)
            shape = "[" + ",".join(str(d) for d in x.shape) + "]f32"
            proc = subprocess.run([pnnx.EXEC_PATH, str(pt), f"inputshape={shape}", "fp16=0"], cwd=tmp,
                                  capture_output=True, text=True, timeout=600)
            param, binf = Path(tmp) / "model.ncnn.param", Path(tmp) / "model.ncnn.bin"
            if proc.returncode != 0 or not param.is_file():
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                raise DeployError(f"ncnn: pnnx conversion failed: {tail[0]}")
            stem = f"model_{artifact.name}.ncnn"
            files = [Path(out_dir) / f"{stem}.param", Path(out_dir) / f"{stem}.bin"]
            shutil.copyfile(param, files[0])
            shutil.copyfile(binf, files[1])
        return files

    def session(self, files: list[Path], threads: int) -> Runner:
        import ncnn

        net = ncnn.Net()
        net.opt.num_threads = int(threads)
        net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
        if net.load_param(str(files[0])) != 0 or net.load_model(str(files[1])) != 0:
            raise DeployError(f"ncnn: cannot load {files[0].name}")
        inp, out = net.input_names()[0], net.output_names()[0]

        def run(x: np.ndarray) -> np.ndarray:
            ex = net.create_extractor()
            ex.input(inp, ncnn.Mat(np.ascontiguousarray(x[0])))
            ret, mat = ex.extract(out)
            if ret != 0:
                raise DeployError(f"ncnn: extracting {out} failed ({ret})")
            return np.array(mat)[None]

        runner = Runner(run, inp, [1, 3, None, None], out)  # the .param file does not record H, W
        runner._net = net  # keep the net alive with the runner
        return runner

    def infer_script(self) -> str:
        return NCNN_LOAD

    def version(self) -> str:
        import ncnn

        return getattr(ncnn, "__version__", "")

