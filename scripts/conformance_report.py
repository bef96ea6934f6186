"""conformance.py's publishing half: the totals the issue's bar is checked on, CONFORMANCE.md
(the matrix) and conformance.json (the cells)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CRASH_MARKERS = ("internal error", "Traceback (most recent call last)", "a mobilec bug")
# `unverified`: no runtime here runs the file (Core ML off macOS); structure checked and the
# graph it was built from verified. Not a failure, but counted apart from `ok`.
GOOD = ("ok", "unverified")
STATUS_COLUMNS = ("ok", "unverified", "degraded", "failed-verification", "failed")


def verified_float(c: dict[str, Any]) -> bool:
    """The issue's bar: top-1 agreement >= 0.99 on class outputs, SNR >= 40 dB otherwise.
    Core ML off macOS is verified structurally (`unverified`: that is all there is)."""
    if c["status"] not in GOOD:
        return False
    if c["status"] == "unverified":
        return True
    if c["top1_agreement"] is not None:
        return c["top1_agreement"] >= 0.99
    if c["snr_db"] is None:  # the report's null for "no measurable error": identical outputs
        return c.get("max_abs_err") == 0.0
    return c["snr_db"] >= 40


def totals(cells: list[dict[str, Any]]) -> dict[str, Any]:
    real = [c for c in cells if c["status"] != "not-built"]
    floats = [c for c in real if c["quantization"] in ("float32", "float16")]
    int8 = [c for c in real if c["quantization"] == "int8"]
    return {"cells": len(real), "not_built": len(cells) - len(real),
            "crashes": sum(c["status"] == "crash" for c in real),
            "timeouts": sum(c["status"] == "timeout" for c in real),
            "ok": sum(c["status"] == "ok" for c in real),
            "float_cells": len(floats), "float_verified": sum(verified_float(c) for c in floats),
            "float_verified_pct": round(100 * sum(verified_float(c) for c in floats)
                                        / max(1, len(floats)), 1),
            "int8_cells": len(int8), "int8_ok": sum(c["status"] == "ok" for c in int8),
            "int8_failed_with_snr": sum(c["status"] not in GOOD and c["snr_db"] is not None
                                        for c in int8),
            # never measured (load or conversion failed): acceptable only with a reason
            "int8_failed_unmeasured": sum(c["status"] not in GOOD and c["snr_db"] is None
                                          and bool(c["reason"]) for c in int8),
            "failed_without_reason": sum(c["status"] not in GOOD and not c["reason"]
                                         for c in real),
            "unverified": sum(c["status"] == "unverified" for c in real),
            # the count: ok / unverified / degraded / failed per format
            "by_format": {f: {s: sum(c["status"] == s for c in real if c["format"] == f)
                              for s in STATUS_COLUMNS}
                          for f in dict.fromkeys(c["format"] for c in real)}}


def _fmt_cell(c: dict[str, Any] | None) -> str:
    if c is None:
        return "-"
    parts = [f"**{c['status']}**"]
    if c["route"]:
        parts.append(f"`{c['route']}`")
    nums = []
    if c["top1_agreement"] is not None:
        nums.append(f"top1 {c['top1_agreement']:.2f}")
    if c["snr_db"] is not None:
        nums.append(f"{c['snr_db']:.1f} dB")
    if c.get("worst_channel_snr_db") is not None and c["worst_channel_snr_db"] != c["snr_db"]:
        nums.append(f"worst ch {c['worst_channel_snr_db']:.1f} dB")
    if c["size_ratio"] is not None:
        nums.append(f"{c['size_ratio']:.1f}x")
    if c["seconds"] is not None:
        nums.append(f"{c['seconds']:.0f}s")
    return "<br>".join(parts + [" · ".join(nums)] if nums else parts)


def markdown(cells: list[dict[str, Any]], meta: dict[str, Any],
             columns: list[tuple[str, str]]) -> str:
    t = meta["totals"]
    lines = ["# Conformance", "",
             f"mobilec {meta['mobilec_version']} · {meta['date']} · {meta['host']} · "
             f"{meta['models']} architectures, {meta['entries']} corpus entries", "",
             f"Wall time: {meta['seconds'] / 60:.1f} min for the runs"
             + (f", plus {meta['build_seconds'] / 60:.1f} min to build the corpus"
                if meta.get("build_seconds") else "")
             + (f"; this invocation reused {meta['resumed']} entries' results (--resume), "
                f"the compress runs of all cells took {meta['compress_seconds'] / 60:.1f} min "
                "one after another" if meta.get("resumed") else ""), "",
             "Real architectures with random weights (logits, inputs in each architecture's range; "
             "keras.applications nets with BatchNorm statistics settled on their eval data and "
             "the classifier layer fitted to random labels, a linear probe: see README), "
             "each saved the ways users save models, through every artifact mobilec makes. "
             "Written by `scripts/conformance.py` (`make conformance`) with conformance.json."
             + (f" Each model: {meta['samples']['eval']} eval samples (fidelity; mobilec "
                "verifies on the first 128), "
                f"{meta['samples']['calibration']} calibration samples (int8)."
                if meta.get("samples") else ""), "",
             "## Totals", "",
             f"- cells: {t['cells']} ({t['ok']} ok, {t.get('unverified', 0)} unverified: not run "
             f"here, structure checked, built from a verified graph); sources the builder could "
             f"not save: {t['not_built']} cells",
             *[f"- {f}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
               for f, counts in (t.get("by_format") or {}).items()],
             f"- crashes (internal error, traceback, dead child): **{t['crashes']}**; "
             f"timeouts: {t['timeouts']}",
             f"- float32/float16 cells verified: {t['float_verified']}/{t['float_cells']} "
             f"(**{t['float_verified_pct']}%**; top-1 >= 0.99 on class outputs, else SNR >= 40 dB)",
             f"- int8 cells: {t['int8_ok']} ok, {t['int8_failed_with_snr']} not ok with a measured "
             f"SNR, {t['int8_failed_unmeasured']} failed before anything could be measured",
             f"- cells not ok without a reason: **{t['failed_without_reason']}**", "",
             "## Matrix", "",
             "Each cell: status, route, worst top-1 agreement / SNR, size ratio vs float32, "
             "seconds of the compress run that made it (SNR is absent when the outputs are "
             "identical, e.g. an .onnx passed through).", ""]
    head = ["model", "source"] + [f"{f} {q}" for f, q in columns]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    index = {(c["model"], c["source"], c["format"], c["quantization"]): c for c in cells}
    for model, source in dict.fromkeys((c["model"], c["source"]) for c in cells):
        row = [model, source] + [_fmt_cell(index.get((model, source, f, q))) for f, q in columns]
        lines.append("| " + " | ".join(row) + " |")
    notes = meta.get("corpus_notes") or []
    if notes:
        lines += ["", "## What the corpus files are", ""] + [f"- {n}" for n in notes]
    bad = [c for c in cells if c["status"] not in GOOD]
    if bad:
        lines += ["", "## Cells that are not ok", ""]
        for c in bad:
            reason = (c["reason"] or "no reason given").replace("\n", " ")[:600]
            lines.append(f"- {c['model']} / {c['source']} / {c['format']} {c['quantization']}: "
                         f"**{c['status']}** — {reason}")
    return "\n".join(lines) + "\n"


def corpus_notes(entries: list[dict[str, Any]]) -> list[str]:
    """Facts about the input files themselves (as a user's converter left them)."""
    notes = []
    for e in entries:
        name = f"{e['model']} / {e['source']}"
        if e.get("error"):
            notes.append(f"{name}: could not be saved this way ({e['error'][:200]})")
        if e.get("stray_inputs"):
            notes.append(f"{name}: extra graph inputs {', '.join(e['stray_inputs'])} (captured "
                         "resources tf2onnx turned into inputs; no data exists for them)")
        if e.get("ort_rejects"):
            notes.append(f"{name}: onnxruntime itself rejects the file ({e['ort_rejects'][:200]})")
    return notes


def publish(cells: list[dict[str, Any]], dest: Path, meta: dict[str, Any],
            columns: list[tuple[str, str]]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "conformance.json").write_text(json.dumps(cells, indent=1) + "\n")
    (dest / "CONFORMANCE.md").write_text(markdown(cells, meta, columns))
