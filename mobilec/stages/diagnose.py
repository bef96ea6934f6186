"""diagnose: per-op int8 error, worst first.

Last stage of `compress --diagnose`, and the stage `mobilec diagnose` plans after
the model-changing stages. Writes diagnose.json (and, for `mobilec diagnose`,
diagnose.html) into the output dir; the stage metrics carry the worst rows, which
report.html draws as a bar chart.
"""

from __future__ import annotations

from typing import Any

from mobilec.diagnose.core import diagnose, write_json
from mobilec.diagnose.view import html_page
from mobilec.errors import EXIT_STAGE, MobilecError, StageError
from mobilec.state import ModelState
from mobilec.util.fs import atomic_write_text

REPORT_ROWS = 20


def run(state: ModelState, config: dict[str, Any] | None = None) -> dict[str, Any]:
    config = config or {}
    try:
        diag = diagnose(state, config.get("backend"))
    except MobilecError as exc:
        if exc.exit_code == EXIT_STAGE:
            raise
        # The artifacts are built by now: fail this stage (exit 3) and keep the report.
        raise StageError(exc.message, where=exc.where, hint=exc.hint) from exc
    path = write_json(diag, state.out_dir)
    if config.get("html"):
        atomic_write_text(path.with_name("diagnose.html"),
                          html_page(diag.as_dict(), f"mobilec diagnose: {state.recipe.name}"))
    summary = diag.as_dict(limit=REPORT_ROWS)
    worst = diag.rows[0] if diag.rows else None
    return {"backend": diag.backend, "ops": len(diag.rows),
            "worst": worst.name if worst else None,
            "worst_snr_db": round(worst.snr_db, 2) if worst and worst.snr_db is not None else None,
            "json": path.name, "scope": summary["scope"], "ranked_by": summary["ranked_by"],
            "rows": summary["rows"]}
