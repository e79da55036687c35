"""Finding runs that need someone: interrupted ones, and ones waiting at a gate.

A run is *interrupted* when the store says it is running but no process
holds its lease (``kernelflow.store.leases``): the process that drove it died.
``%load_ext kernelflow`` prints these, and the runs waiting for an answer,
with the line that continues each one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

NOTICE_LIMIT = 10


def unfinished_runs(store: Any = None) -> pl.DataFrame:
    """Runs that are not finished and not being driven by a live process:
    ``run_id, workflow, status (interrupted | waiting), started_at, waiting_for, resume``."""
    import polars as pl

    from .store_access import open_store

    store = store or open_store()
    schema = {"run_id": pl.String, "workflow": pl.String, "status": pl.String, "started_at": pl.Datetime("us"),
              "waiting_for": pl.String, "resume": pl.String}  # fmt: skip
    if not getattr(store, "exists", True):
        return pl.DataFrame(schema=schema)
    rows = store.sql(
        "SELECT run_id, workflow, status, started_at FROM runs WHERE status IN ('running', 'waiting') "
        "ORDER BY started_at DESC"
    )
    out = []
    for r in rows.iter_rows(named=True):
        if store.lease_holder(r["run_id"]) is not None:
            continue  # driven right now by a live process
        waiting_for = None
        if r["status"] == "waiting":
            gates = store.sql(
                "SELECT task_id FROM approvals WHERE run_id = ? AND status = 'pending' ORDER BY requested_at", [r["run_id"]]
            )["task_id"].to_list()
            waiting_for = ", ".join(gates) if gates else "a breakpoint"
        out.append(
            {
                "run_id": r["run_id"],
                "workflow": r["workflow"],
                "status": "interrupted" if r["status"] == "running" else "waiting",
                "started_at": r["started_at"],
                "waiting_for": waiting_for,
                "resume": f"kf.resume({r['run_id']!r})",
            }
        )
    return pl.DataFrame(out, schema=schema)


def notice(store: Any = None) -> str | None:
    """The text the extension prints on load, or None when nothing needs anyone."""
    try:
        df = unfinished_runs(store)
    except Exception:  # noqa: BLE001 - a notice must never stop the extension from loading
        return None
    if df.height == 0:
        return None
    lines = []
    for r in df.head(NOTICE_LIMIT).iter_rows(named=True):
        if r["status"] == "interrupted":
            lines.append(f"  {r['run_id']} ({r['workflow']}) was interrupted: resume it with {r['resume']}")
        else:
            lines.append(
                f"  {r['run_id']} ({r['workflow']}) waits for {r['waiting_for']}: "
                f"kf.approve({r['run_id']!r}, STEP) or kf.reject(...), then {r['resume']}"
            )
    more = f"\n  ... and {df.height - NOTICE_LIMIT} more: kf.unfinished_runs()" if df.height > NOTICE_LIMIT else ""
    return "kernelflow: runs that need you (run the cell that defines each workflow first):\n" + "\n".join(lines) + more
