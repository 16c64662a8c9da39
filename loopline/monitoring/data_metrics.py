"""Data-quality gauges of a dataset, read from its batch ledger (batches/D) after every ingest.

The ledger is the source of truth, so the counters are exact and idempotent: a retried batch, a duplicate
file or two ingest processes never count a batch twice, and a lost textfile is rebuilt whole by the next
ingest. Families (label `dataset` on every one):
- `loopline_ingest_batches_total{status}`: ledger rows, accepted and rejected (both always present);
- `loopline_ingest_rows_total{outcome}`: clean and quarantined rows of accepted batches, and every row of
  rejected attempts (`rejected`);
- `loopline_ingest_last_batch_*`: the newest ledger row (accepted, rows by outcome, quarantine ratio, when);
- `loopline_data_quarantine_ratio_limit`: the limit the gate applies (`validation.quarantine_max_fraction`
  or the contract's), exported beside the ratio so an alert compares two series, not a copied number.
A file the gate could not read at all never reaches the ledger, so it is not counted here (its rejection
is in the ingest run's state and event).
"""

from __future__ import annotations

from pathlib import Path

from loopline.config import LifecycleConfig
from loopline.data.contracts import Contract
from loopline.monitoring.publish import Families, publish
from loopline.storage.lake import Lake

JOB = "ingest"


def quarantine_limit(contract: Contract, cfg: LifecycleConfig) -> float:
    """The quarantine fraction over which the gate rejects a batch (the config overrides the contract)."""
    override = cfg.validation.quarantine_max_fraction
    return float(override if override is not None else contract.quarantine_max_fraction)


def ingest_metrics_text(lake: Lake, dataset: str, limit: float) -> str:
    from loopline.data import ledger
    from loopline.storage import delta

    table = delta.read_column(
        lake,
        ledger.ledger_uri(lake, dataset),
        ["status", "rows_in", "rows_clean", "rows_quarantined", "ingested_at"],
    )
    rows = table.to_pylist() if table is not None else []
    accepted = [r for r in rows if r["status"] == "accepted"]
    rejected = [r for r in rows if r["status"] != "accepted"]
    f = Families()
    batches_help = "batches in the ledger by verdict (a rejected file retried counts once per attempt)"
    f.counter(
        "loopline_ingest_batches_total", batches_help, len(accepted), dataset=dataset, status="accepted"
    )
    f.counter(
        "loopline_ingest_batches_total", batches_help, len(rejected), dataset=dataset, status="rejected"
    )
    rows_help = (
        "rows ingested by outcome: clean and quarantined rows of accepted batches, rows of rejected ones"
    )
    for outcome, value in (
        ("clean", sum(r["rows_clean"] for r in accepted)),
        ("quarantined", sum(r["rows_quarantined"] for r in accepted)),
        ("rejected", sum(r["rows_in"] for r in rejected)),
    ):
        f.counter("loopline_ingest_rows_total", rows_help, value, dataset=dataset, outcome=outcome)
    f.gauge(
        "loopline_data_quarantine_ratio_limit",
        "quarantined share of a batch over which the gate rejects it (quarantine_max_fraction)",
        limit,
        dataset=dataset,
    )
    if rows:
        last = max(rows, key=lambda r: r["ingested_at"])
        f.gauge(
            "loopline_ingest_last_batch_accepted",
            "1 when the newest batch was accepted, 0 when it was rejected",
            int(last["status"] == "accepted"),
            dataset=dataset,
        )
        last_help = "rows of the newest batch: in, clean, quarantined"
        for outcome in ("in", "clean", "quarantined"):
            f.gauge(
                "loopline_ingest_last_batch_rows",
                last_help,
                last[f"rows_{outcome}"],
                dataset=dataset,
                outcome=outcome,
            )
        f.gauge(
            "loopline_ingest_last_batch_quarantine_ratio",
            "quarantined rows / rows in, of the newest batch",
            last["rows_quarantined"] / last["rows_in"] if last["rows_in"] else 0.0,
            dataset=dataset,
        )
        f.gauge(
            "loopline_ingest_last_batch_timestamp_seconds",
            "when the newest batch was ingested (Unix time)",
            last["ingested_at"].timestamp(),
            dataset=dataset,
        )
    return f.text()


def publish_ingest_metrics(lake: Lake, cfg: LifecycleConfig, contract: Contract) -> Path | None:
    """Publish the dataset's gauges (textfile + Pushgateway). A ledger that cannot be read is a warning:
    the batch itself has landed."""
    import logging

    try:
        text = ingest_metrics_text(lake, contract.dataset, quarantine_limit(contract, cfg))
    except Exception as exc:
        logging.getLogger(__name__).warning("ingest metrics of %s not published: %s", contract.dataset, exc)
        return None
    return publish(cfg.home, JOB, text, {"dataset": contract.dataset})
