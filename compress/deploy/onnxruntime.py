"""Target ``onnxruntime``: the ONNX file itself, run by ONNX Runtime's CPU provider."""

from __future__ import annotations

import shutil
from pathlib import Path

from compress.deploy.base import Artifact, BuildContext, Runner, Target

ORT_LOAD = '''import onnxruntime as ort


def load(path, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]
'''


def ort_runner(path: Path, threads: int) -> Runner:
    """A Runner over an ONNX Runtime CPU session (.onnx or .ort), settings as everywhere in compress."""
    from compress.runtime.session import make_session

    sess = make_session(path, threads=threads)
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0].name
    return Runner(lambda x: sess.run([out], {inp.name: x})[0], inp.name, inp.shape)


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"
    extra = None  # a core dependency
    packages = ("onnxruntime",)

    def build(self, artifact: Artifact, out_dir: Path, ctx: BuildContext) -> list[Path]:
        dst = Path(out_dir) / f"model_{artifact.name}.onnx"
        shutil.copyfile(artifact.onnx, dst)
        return [dst]

    def session(self, files: list[Path], threads: int) -> Runner:
        return ort_runner(files[0], threads)

    def infer_script(self) -> str:
        return ORT_LOAD

    def version(self) -> str:
        import onnxruntime

        return onnxruntime.__version__
