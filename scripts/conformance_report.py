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
            "by_format": {f: _by_status([c for c in real if c["format"] == f])
                          for f in dict.fromkeys(c["format"] for c in real)},
            "label_outputs": label_count(cells), "coreai": coreai_share(real)}


def coreai_share(cells: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Issue 26's bar, per corpus entry with a Core AI column: an entry counts as verified
    when each of its float32/float16 .aimodel cells is (verified_float); PyTorch entries
    (.pt2 sources) apart from all of them."""
    entries: dict[tuple[str, str], list[bool]] = {}
    for c in cells:
        if c["format"] == "coreai" and c["quantization"] in ("float32", "float16") \
                and c["status"] != "not-built":
            entries.setdefault((c["model"], c["source"]), []).append(verified_float(c))
    if not entries:
        return None
    ok = {k for k, v in entries.items() if all(v)}
    torch = [k for k in entries if k[1] == "pt2"]
    return {"entries": len(entries), "verified": len(ok),
            "verified_pct": round(100 * len(ok) / len(entries), 1),
            "torch_entries": len(torch), "torch_verified": sum(k in ok for k in torch),
            "torch_verified_pct": round(100 * sum(k in ok for k in torch) / max(1, len(torch)), 1),
            "not_verified": sorted(f"{m}/{s}" for m, s in entries if (m, s) not in ok)}


def _by_status(cells: list[dict[str, Any]]) -> dict[str, int]:
    """Every status column, then any other status present (crash, timeout)."""
    counts = {s: sum(c["status"] == s for c in cells) for s in STATUS_COLUMNS}
    for c in cells:
        if c["status"] not in counts:
            counts[c["status"]] = sum(d["status"] == c["status"] for d in cells)
    return counts


# ------------------------------------------------------------------ multi-output entries

ACCURACY_TOLERANCE = 0.02  # the source's accuracy on the labelled output, as the corpus made it


def multi_output_entries(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (model, source) with several outputs: the outputs, the output the corpus
    made the labels on, what mobilec chose and why, the accuracies, and the verdict `on_class`
    (True: the source's accuracy is the one the labels were made to give on their output;
    None: no class-score output, no labels)."""
    entries: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cells:
        entries.setdefault((c["model"], c["source"]), []).append(c)
    records = []
    for (model, source), group in entries.items():
        labels = next((c.get("labels") for c in group if c.get("labels")), None)
        outputs = next((c.get("outputs") for c in group if c.get("outputs")), None) or \
            (labels or {}).get("outputs") or []
        if len(outputs) < 2:
            continue
        chosen = {json.dumps(c["label_output"], sort_keys=True): c["label_output"]
                  for c in group if c.get("label_output")}
        sources = sorted({c["source_accuracy"] for c in group
                          if c.get("source_accuracy") is not None})
        # an output of class-score shape with no labels: a corpus built before it had labels
        unlabelled = not labels and any(len(o.get("shape") or []) == 2 and
                                        (o["shape"][-1] or 0) >= 2 for o in outputs)
        on_class: bool | None = False if unlabelled else None
        if labels:
            on_class = bool(sources) and all(abs(a - labels["accuracy"]) <= ACCURACY_TOLERANCE
                                            for a in sources) and \
                all(ch.get("index") is not None for ch in chosen.values())
        records.append({"model": model, "source": source, "outputs": outputs, "labels": labels,
                        "chosen": list(chosen.values()), "source_accuracy": sources,
                        "artifacts": [(c["format"], c["quantization"], c.get("accuracy"),
                                       c["status"]) for c in group],
                        "on_class": on_class})
    return records


def label_count(cells: list[dict[str, Any]]) -> dict[str, int]:
    """The issue's measure: multi-output entries whose accuracy is read from the class output."""
    records = multi_output_entries(cells)
    labelled = [r for r in records if r["on_class"] is not None]
    return {"multi_output": len(records), "with_class_output": len(labelled),
            "read_from_class_output": sum(bool(r["on_class"]) for r in labelled)}


def _acc(a: float | None) -> str:
    return "null" if a is None else f"{a:.3f}"


def multi_output_section(cells: list[dict[str, Any]]) -> list[str]:
    records = multi_output_entries(cells)
    if not records:
        return []
    n = label_count(cells)
    lines = ["", "## Multi-output entries: which output accuracy is read from", "",
             f"Multi-output entries whose accuracy is read from the class output: "
             f"**{n['read_from_class_output']}/{n['with_class_output']}** "
             f"({n['multi_output'] - n['with_class_output']} more without an output of "
             "class-score shape [batch, classes]: no labels, accuracy null by design). The "
             "corpus makes the "
             "labels on the class output (the source's own top-1 with 10% moved to another "
             "class), so the source must show that accuracy there; any other output shows "
             "another.", ""]
    for r in records:
        outs = ", ".join(f"{o['name']} {o['shape']}" for o in r["outputs"])
        labels = r["labels"]
        made = (f"labels on output {labels['index']} ('{labels['output']}', {labels['classes']} "
                f"classes), source accuracy there {labels['accuracy']:.3f}" if labels
                else "class-score output but no labels (corpus built before labels: rebuild it)"
                if r["on_class"] is False else "no class-score output: no labels")
        chosen = "; ".join(f"'{c['name']}' (index {c['index']}, {c['chosen_by']}: {c['reason']})"
                           if c.get("index") is not None else f"none ({c['reason']})"
                           for c in r["chosen"]) or \
            ("not reported (no run got past load)" if labels else "nothing (no labels)")
        verdict = {True: "read from the class output", False: "**NOT the class output**",
                   None: "n/a"}[r["on_class"]]
        arts = ", ".join(f"{f} {q} {_acc(a)}" for f, q, a, st in r["artifacts"]
                         if st != "not-built") if labels else "null (no labels)"
        lines += [f"- **{r['model']} / {r['source']}** — {verdict}",
                  f"  - outputs: {outs}; {made}",
                  f"  - mobilec chose: {chosen}",
                  f"  - source accuracy: {', '.join(_acc(a) for a in r['source_accuracy']) or 'null'}"
                  f"; artifacts: {arts or 'none'}"]
    return lines


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
    if c.get("accuracy") is not None:
        nums.append(f"acc {c['accuracy']:.2f}")
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
             *([f"Not run in this matrix ({len(meta['not_run'])} entries, no result by the "
                f"publishing time): {', '.join(meta['not_run'])}", ""]
               if meta.get("not_run") else []),
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
             f"- cells not ok without a reason: **{t['failed_without_reason']}**",
             *([f"- entries whose float32 and float16 .aimodel are both verified: PyTorch "
                f"**{a['torch_verified']}/{a['torch_entries']} ({a['torch_verified_pct']}%)**, "
                f"all **{a['verified']}/{a['entries']} ({a['verified_pct']}%)**"
                + (f"; not: {', '.join(a['not_verified'])}" if a["not_verified"] else "")]
               if (a := t.get("coreai")) else []),
             *([f"- multi-output entries whose accuracy is read from the class output: "
                f"**{t['label_outputs']['read_from_class_output']}/"
                f"{t['label_outputs']['with_class_output']}** (see below)"]
               if t.get("label_outputs", {}).get("multi_output") else []), "",
             "## Matrix", "",
             "Each cell: status, route, worst top-1 agreement / SNR, accuracy on the eval labels, "
             "size ratio vs float32, "
             "seconds of the compress run that made it (SNR is absent when the outputs are "
             "identical, e.g. an .onnx passed through).", ""]
    head = ["model", "source"] + [f"{f} {q}" for f, q in columns]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    index = {(c["model"], c["source"], c["format"], c["quantization"]): c for c in cells}
    for model, source in dict.fromkeys((c["model"], c["source"]) for c in cells):
        row = [model, source] + [_fmt_cell(index.get((model, source, f, q))) for f, q in columns]
        lines.append("| " + " | ".join(row) + " |")
    lines += multi_output_section(cells)
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
