"""diagnose (compress --diagnose): per-op int8 error, worst first, after everything else.

Writes diagnose.json beside the report; the stage metrics carry the worst rows,
which report.html draws as a bar chart.
"""

from __future__ import annotations

from typing import Any

from mobilec.errors import EXIT_STAGE, MobilecError, StageError
from mobilec.state import ModelState

REPORT_ROWS = 20


def run(state: ModelState, config: Any = None) -> dict[str, Any]:
    from mobilec.diagnose.core import diagnose, write_json

    try:
        diag = diagnose(state)
    except MobilecError as exc:
        if exc.exit_code == EXIT_STAGE:
            raise
        # The artifacts are built by now: fail this stage (exit 3) and keep the report.
        raise StageError(exc.message, where=exc.where, hint=exc.hint) from exc
    path = write_json(diag, state.out_dir)
    summary = diag.as_dict(limit=REPORT_ROWS)
    worst = diag.rows[0] if diag.rows else None
    return {"backend": diag.backend, "ops": len(diag.rows),
            "worst": worst.name if worst else None,
            "worst_snr_db": round(worst.snr_db, 2) if worst and worst.snr_db is not None else None,
            "json": path.name, "scope": summary["scope"], "ranked_by": summary["ranked_by"],
            "rows": summary["rows"]}
