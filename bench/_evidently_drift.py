"""Evidently's DataDriftPreset on two parquet files; prints one JSON line of per-column verdicts and times.

Runs in the side venv (.bench-venvs/evidently: evidently 0.7.23 with pandas<3, which Evidently needs),
never in loopline's own environment. Usage:
    python bench/_evidently_drift.py REFERENCE.parquet CURRENT.parquet --numeric a,b --categorical c
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("reference")
    parser.add_argument("current")
    parser.add_argument("--numeric", default="", help="comma-separated numeric columns")
    parser.add_argument("--categorical", default="", help="comma-separated categorical columns")
    args = parser.parse_args()
    numeric = [c for c in args.numeric.split(",") if c]
    categorical = [c for c in args.categorical.split(",") if c]

    started = time.perf_counter()
    import evidently
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    reference = pd.read_parquet(args.reference, columns=numeric + categorical)
    current = pd.read_parquet(args.current, columns=numeric + categorical)
    loaded = time.perf_counter()

    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    report = Report([DataDriftPreset()])
    t0, cpu0 = time.perf_counter(), time.process_time()
    snapshot = report.run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0

    columns = {}
    drift_share = None
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            method, threshold, score = config["method"], float(config["threshold"]), float(metric["value"])
            # Evidently's tests: p-values drift below the threshold, distances at or above it
            drift = score < threshold if "p_value" in method else score >= threshold
            columns[config["column"]] = {
                "method": method,
                "score": score,
                "threshold": threshold,
                "drift": drift,
            }
        elif config["type"].endswith("DriftedColumnsCount"):
            drift_share = metric["value"]["share"]
    print(
        json.dumps(
            {
                "version": evidently.__version__,
                "pandas": pd.__version__,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "load_seconds": loaded - started,
                "drift_share": drift_share,
                "columns": columns,
            }
        )
    )


if __name__ == "__main__":
    main()
