"""Fidelity per stage: which stage of a run lost agreement with the original.

The runner records, after every stage that changes outputs (the original, each torch pass,
the fp32 export, each ONNX pass), that stage's decoded predictions on the validation images
once: torch stages in torch, ONNX stages in ONNX Runtime. Any two records are judged by
:func:`compress.fidelity.compare`, the evaluator of the final check, so the table is not a
second code path. The last record is the exported ``model.onnx``: its comparison with the
original *is* the fidelity check.

    rec = StageRecorder(adapter, validation, recipe.fidelity, threads=2)
    rec.torch("original", reference); rec.torch("prune.structured", model)
    rec.onnx("export", "work/model_fp32.onnx"); rec.onnx("quantize.ptq", "model.onnx")
    result = rec.result()          # FidelityResult: last stage vs original
    table = rec.table(result)      # report.json's ``stage_fidelity``
    blame(table, result.task)      # "lost at: prune.structured (agreement_map50 0.81 vs original); ..."
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

PRIMARY = {"detect": "agreement_map50", "classify": "top1_agreement"}
SHOWN = {"detect": ("agreement_map50", "agreement_map50_95", "matched_recall", "score_drift"),
         "classify": ("top1_agreement", "top5_agreement", "kl_divergence")}


@dataclass
class StageRecord:
    name: str
    runtime: str  # "torch" | "onnxruntime"
    predictions: Any  # compress.fidelity.Predictions
    seconds: float


class StageRecorder:
    """Predictions of each stage on the (first ``cfg.samples``) validation images."""

    def __init__(self, adapter, data, cfg, *, threads: int = 2):
        from compress.errors import DataError

        self.adapter, self.cfg, self.threads = adapter, cfg, threads
        self.data = data.head(cfg.samples)
        if len(self.data) == 0:
            raise DataError("fidelity check: the validation data has no images")
        self.images = [s.image for s in self.data.samples]
        self.records: list[StageRecord] = []

    def torch(self, name: str, model) -> None:
        from compress.fidelity import predict_torch

        t0 = time.perf_counter()
        preds = predict_torch(self.adapter, model, self.images, self.cfg.eval_conf, self.cfg.iou)
        self.records.append(StageRecord(name, "torch", preds, time.perf_counter() - t0))

    def onnx(self, name: str, path) -> None:
        from compress.fidelity import predict_onnx

        t0 = time.perf_counter()
        preds = predict_onnx(self.adapter, path, self.images, self.cfg.eval_conf, self.cfg.iou,
                             threads=self.threads)
        self.records.append(StageRecord(name, "onnxruntime", preds, time.perf_counter() - t0))

    def compare(self, i: int, j: int):
        from compress.fidelity import compare

        return compare(self.adapter, self.records[i].predictions, self.records[j].predictions, self.data, self.cfg)

    def result(self):
        """The fidelity check: the last stage (the exported file) against the original."""
        if len(self.records) < 2:
            raise RuntimeError("StageRecorder.result needs the original and at least one stage")
        return self.compare(0, len(self.records) - 1)

    def table(self, final=None) -> list[dict]:
        """One row per stage after the original: agreement vs the original and vs the stage before."""
        task = self.adapter.task
        rows = []
        last = len(self.records) - 1
        for i in range(1, len(self.records)):
            vs_orig = final if (i == last and final is not None) else self.compare(0, i)
            vs_prev = vs_orig if i == 1 else self.compare(i - 1, i)
            rec = self.records[i]
            prev = self.records[i - 1].name
            rows.append({"stage": rec.name, "runtime": rec.runtime, "previous": prev,
                         "vs_original": _summary(vs_orig, task), "vs_previous": _summary(vs_prev, task, prev),
                         "predict_seconds": round(rec.seconds, 3)})
        return rows


def _summary(result, task: str, reference: str = "original") -> dict:
    d = result.to_dict()
    out = {k: d.get(k) for k in SHOWN.get(task, ()) if d.get(k) is not None}
    out["measurable"] = result.measurable
    if not result.measurable:
        reason = result.reason or ""
        out["reason"] = reason if reference == "original" else reason.replace("the original model",
                                                                               f"stage {reference}")
    return out


def culprit(table: list[dict], task: str) -> dict | None:
    """The stage whose own change (vs the stage before it) lost the most agreement."""
    key = PRIMARY.get(task)
    best, worst = None, None
    for row in table:
        v = row["vs_previous"].get(key)
        if v is None:
            continue
        if worst is None or v < worst:
            best, worst = row, v
    return best


def blame(table: list[dict], task: str) -> str | None:
    """``lost at: STAGE (metric 0.81 vs original); OTHER vs PREV 0.98`` (None without a table)."""
    key = PRIMARY.get(task)
    row = culprit(table, task)
    if row is None:
        return None
    text = f"lost at: {row['stage']} ({key} {row['vs_original'][key]:.3f} vs original)"
    others = [f"{r['stage']} vs {r['previous']} {r['vs_previous'][key]:.3f}" for r in table
              if r is not row and r["vs_previous"].get(key) is not None]
    return "; ".join([text, *others])


def judge(recorder: StageRecorder, ctx) -> tuple[Any, list[dict], str | None, dict | None]:
    """(final FidelityResult, per-stage table, "lost at" text or None, the blamed pass's report section).

    The "lost at" text is given only when the check fails (and is added to the result's notes);
    the blamed section is what the runner reads to decide whether the int8 drift table explains it.
    """
    result = recorder.result()
    table = recorder.table(result)
    text, section = None, None
    if not result.passed and result.measurable:
        text = blame(table, result.task)
        row = culprit(table, result.task)
        if row is not None:
            section = ctx.report.get(row["stage"]) if isinstance(ctx.report.get(row["stage"]), dict) else {}
        if text:
            result.notes.append(f"Agreement {text}.")
    return result, table, text, section
