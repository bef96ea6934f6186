"""Artifact table cells shared by report.md, report.html and the terminal."""

from __future__ import annotations

from typing import Any

from mobilec.report.schema import UNVERIFIED_MEANING


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def label_source(model: dict[str, Any]) -> str | None:
    """Which output the accuracy figures read, for a model with several outputs."""
    label = model.get("label_output")
    if not label or label["index"] is None or len(model.get("outputs") or []) < 2:
        return None
    return f"accuracy read from output '{label['name']}' (index {label['index']}): {label['reason']}"


def artifact_cells(a: dict[str, Any]) -> list[str]:
    fid = a.get("fidelity") or {}
    lat = a.get("latency_ms") or {}
    drop = a.get("accuracy_drop")
    return [a["path"], a.get("target") or a["role"], a["quantization"], a.get("delegate") or "-",
            fmt_bytes(a.get("size_bytes")), fmt_bytes(a.get("gzip_bytes")),
            "-" if a.get("size_ratio") is None else f"{a['size_ratio']:.2f}x",
            pct(a.get("accuracy")), "-" if drop is None else f"{drop * 100:+.2f} pt",
            "-" if fid.get("top1_agreement") is None else f"{fid['top1_agreement']:.3f}",
            "-" if fid.get("snr_db") is None else f"{fid['snr_db']:.1f}",
            "-" if lat.get("median") is None else f"{lat['median']:.3f}", a["status"]]


def status_legend(artifacts: list[dict[str, Any]]) -> str | None:
    """One line saying what `unverified` means, when a row has it (else None)."""
    if not any(a.get("status") == "unverified" for a in artifacts):
        return None
    return f"unverified: {UNVERIFIED_MEANING}; not the same as ok (measured on the file)"


ARTIFACT_HEADERS = ["artifact", "target", "quant", "delegate", "size", "gzip", "smaller",
                    "accuracy", "drop", "top-1 agree", "SNR dB", "ms (median)", "status"]
