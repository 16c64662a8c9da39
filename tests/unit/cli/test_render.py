"""flows/render/: every command's result becomes a short summary with a table, never a JSON dump, and
a result the renderer does not expect still prints (compactly) instead of failing the command."""

from __future__ import annotations

import io
import json

import pytest
from rich.table import Table

from flows import render

BATCH = {
    "dataset": "tiny",
    "batch_id": "c137041e451019a462e4",
    "source": "/data/tiny.csv",
    "rows_in": 1300,
    "rows_clean": 1290,
    "rows_quarantined": 10,
    "duplicate_batch": False,
    "accepted": True,
    "reason": None,
    "raw_version": 0,
    "clean_version": 0,
    "quarantine_version": 0,
    "contract_version": 1,
    "data_docs_path": "/home/data_docs/validations/tiny/b/t/page.html",
}
CI = {"metric": "roc_auc", "estimate": 0.012, "low": -0.004, "high": 0.03, "level": 0.95, "samples": 1000}
PROMOTION = {
    "model": "tiny",
    "promoted": True,
    "candidate_version": 2,
    "champion_version": 2,
    "previous_version": 1,
    "compared_with": 1,
    "reason": "roc_auc up 0.012",
    "primary_metric": "roc_auc",
    "metrics": {"roc_auc": 0.95, "accuracy": 0.9},
    "champion_metrics": {"roc_auc": 0.938, "accuracy": 0.91},
    "ci": {**CI, "method": "bootstrap", "higher_is_better": True},
    "checks": [
        {"name": "infra validation", "passed": True, "detail": "passed"},
        {"name": "min_score", "passed": None, "detail": "not set"},
    ],
    "rows": 400,
    "model_card_uri": "runs:/abc/model_card.md",
}
DRIFT = {
    "model": "tiny",
    "model_version": "1",
    "drift_detected": True,
    "drift_share": 1 / 3,
    "share_threshold": 0.5,
    "prediction_drift": True,
    "drifted_features": ["x1"],
    "features": {
        "x1": {"kind": "numeric", "method": "ks", "score": 5e-52, "threshold": 0.05, "drift": True},
        "seg": {
            "kind": "categorical",
            "method": "chisquare",
            "score": 0.9,
            "threshold": 0.05,
            "drift": False,
        },
    },
    "prediction": {"kind": "numeric", "method": "ks", "score": 1e-40, "threshold": 0.05, "drift": True},
    "n_current": 200,
    "n_reference": 239,
    "window": {"description": "file /tmp/shifted.csv", "kind": "file", "rows": 200},
    "event_emitted": True,
}
TRAIN = {
    "model_name": "tiny",
    "model_version": "3",
    "model_uri": "models:/tiny/3",
    "steps": 50,
    "resumed_from_step": 20,
    "device": "cpu",
    "precision": "fp32",
    "devices": 1,
    "samples_per_s": 8878.99,
    "features_version": 0,
    "clean_version": 0,
    "val_metrics": {"roc_auc": 0.96, "val_loss": 0.25},
    "run_id": "d3d8",
    "state_sha256": "afc28f157e6afe75bf37",
}
STATUS = {
    "home": "/h",
    "lake": "/h/lake",
    "datasets": {
        "tiny": {
            "tables": {
                "raw": {"rows": 600, "version": 1},
                "clean": {"rows": 300, "version": 0},
                "quarantine": None,
                "features": {"rows": 300, "version": 0},
            },
            "batches_accepted": 1,
            "batches_rejected": 1,
            "contract": {"version": 1},
        }
    },
    "models": {
        "tiny": {
            "champion_version": 1,
            "previous_version": None,
            "challenger_version": None,
            "latest_version": 3,
            "last_runs": [{"name": "tiny-00716b88", "status": "FINISHED", "metrics": {"val_roc_auc": 0.96}}],
            "last_drift": {"drift_detected": True, "drifted_features": ["x1"], "model_version": "1"},
        }
    },
}
CASES = {
    "ingest": ({**BATCH}, {}, ["ingest tiny", "rows in", "quarantined", "1,300", "accepted", "contract v1"]),
    "features": (
        {"dataset": "tiny", "features_version": 2, "clean_version": 2, "new_batches": 0, "rows_added": 0},
        {},
        ["features/tiny v2", "nothing new to build"],
    ),
    "train": (
        TRAIN,
        {},
        ["trained tiny v3", "resumed from step 20", "8,879 samples/s", "val roc_auc", "0.9600"],
    ),
    "evaluate": (
        {k: v for k, v in PROMOTION.items() if k not in ("promoted", "checks")},
        {},
        ["vs @champion v1", "roc_auc *", "+0.0120", "95% CI [-0.0040, +0.0300]"],
    ),
    "promote": (PROMOTION, {}, ["PROMOTED tiny v2 to @champion (@previous v1)", "check", "pass", "95% CI"]),
    "rollback": (
        {
            "model": "tiny",
            "champion_version": 1,
            "previous_version": None,
            "rolled_back_version": 2,
            "reason": "x",
        },
        {},
        ["@champion v2 -> v1", "@previous"],
    ),
    "drift": (
        DRIFT,
        {},
        ["DRIFT DETECTED", "1 of 2 features (33%, threshold 50%)", "x1", "5.00e-52", "(prediction)"],
    ),
    "status": (
        STATUS,
        {},
        ["dataset", "600 v1", "1 ok, 1 rejected", "@champion", "DRIFT: x1", "roc_auc 0.9600"],
    ),
    "run": (
        {
            "ingest": [BATCH],
            "drift": {"skipped": True, "message": "model 'tiny' has no @champion yet"},
            "features": {"dataset": "tiny", "features_version": 0, "new_batches": 1, "rows_added": 1290},
            "train": TRAIN,
            "promote": PROMOTION,
            "deploy": {"servers": [{"url": "http://127.0.0.1:8080", "healthy": True, "version": 2}]},
            "champion_version": 2,
        },
        {"home": "/h"},
        ["stage", "skipped: model 'tiny' has no @champion yet", "promoted v2", "serving v2", "Where to look"],
    ),
    "up": (
        {
            "prefect_ui_url": "http://127.0.0.1:4200",
            "mlflow_ui_url": "http://127.0.0.1:5000",
            "deployments": ["train"],
        },
        {},
        ["loopline stack is up", "Prefect UI", "http://127.0.0.1:4200", "train"],
    ),
    "down": (
        {
            "home": "/h",
            "stopped": ["worker-cpu", "prefect-server"],
            "already_gone": [],
            "model_servers_stopped": [],
        },
        {},
        ["loopline stack stopped", "worker-cpu, prefect-server"],
    ),
    "init": (
        {
            "out": "contracts/t.yaml",
            "rows": 10,
            "dataset": "t",
            "id": "rid",
            "id_reason": "unique",
            "label": "y",
            "task": "binary",
            "task_reason": "two values",
            "columns_by_type": {"float": ["x1", "x2"], "int": ["rid", "y"]},
        },
        {"sample": "t.csv"},
        ["drafted contracts/t.yaml from t.csv", "x1, x2", "loopline ingest --contract contracts/t.yaml"],
    ),
    "maintenance": (
        {
            "lake": "/h/lake",
            "dry_run": False,
            "expired_before": "2026-05-31T12:00:00+00:00",
            "file_retention_hours": 168,
            "failed": [],
            "tables": [
                {
                    "table": "predictions/m",
                    "version_before": 23,
                    "version_after": 26,
                    "files_before": 24,
                    "files_after": 1,
                    "rows_deleted": 1200,
                    "compacted": True,
                    "files_vacuumed": 3,
                    "bytes_vacuumed": 4096,
                    "vacuum_skipped": None,
                    "error": None,
                },
                {
                    "table": "clean/d",
                    "version_before": 5,
                    "version_after": 5,
                    "files_before": 6,
                    "files_after": 6,
                    "rows_deleted": 0,
                    "compacted": False,
                    "files_vacuumed": 0,
                    "bytes_vacuumed": 0,
                    "vacuum_skipped": "pinned",
                    "error": None,
                },
            ],
        },
        {},
        ["lake maintenance of /h/lake", "predictions/m", "v23 -> v26", "24 -> 1", "1,200", "not vacuumed"],
    ),
}


def shown(command: str, result, **context) -> str:
    out = io.StringIO()
    render.show(command, result, file=out, **context)
    return out.getvalue()


def test_every_command_has_a_renderer():
    assert set(render.RENDERERS) == set(CASES)


@pytest.mark.parametrize("command", sorted(CASES))
def test_each_command_ends_with_a_table_not_a_json_dump(command):
    result, context, expected = CASES[command]
    text = shown(command, result, **context)
    for part in expected:
        assert part in text, f"{part!r} not in:\n{text}"
    assert any(isinstance(item, Table) for item in render.RENDERERS[command](result, **context))
    assert not text.lstrip().startswith("{") and '": ' not in text


def test_a_folder_ingest_has_a_row_per_batch_and_a_total():
    second = {**BATCH, "source": "/data/b.csv", "batch_id": "b2", "rows_in": 10, "duplicate_batch": True}
    folder = {
        **BATCH,
        "source": None,
        "batch_id": ["c137", "b2"],
        "rows_in": 1310,
        "batches": [BATCH, second],
    }
    text = shown("ingest", folder)
    assert "tiny.csv" in text and "b.csv" in text and "total" in text and "1,310" in text
    assert "duplicate" in text and "from 2 files" in text


def test_an_unchanged_rerun_says_so_instead_of_repeating_the_first_runs_work():
    cached = {"dataset": "tiny", "features_version": 0, "new_batches": 1, "rows_added": 1290, "cached": True}

    def flat(text: str) -> str:  # the table wraps long lines
        return " ".join(text.replace("│", " ").split())

    text = flat(
        shown(
            "run",
            {
                "ingest": [{**BATCH, "duplicate_batch": True}],
                "features": cached,
                "train": {**TRAIN, "cached": True},
                "promote": {**PROMOTION, "cached": True},
            },
            home="/h",
        )
    )
    assert "already ingested, nothing new" in text and "1,300 rows in" not in text
    assert text.count("unchanged since the last run") == 3, text
    assert "unchanged since the last build" in flat(shown("features", cached))
    mixed = flat(
        shown("run", {"ingest": [BATCH, {**BATCH, "batch_id": "b2", "duplicate_batch": True}]}, home="/h")
    )
    assert f"{BATCH['rows_in']:,} rows in" in mixed and "1 already ingested, not counted" in mixed


def test_a_skipped_drift_check_says_why():
    text = shown("drift", {"model": "m", "skipped": True, "message": "the window has no rows"})
    assert "skipped" in text and "the window has no rows" in text


def test_a_refused_promotion_names_the_champion_that_stays():
    refused = {**PROMOTION, "promoted": False, "champion_version": 1, "reason": "min_improvement: no"}
    text = shown("promote", refused)
    assert "NOT PROMOTED tiny v2: @champion stays v1" in text and "min_improvement: no" in text


def test_an_unexpected_result_still_prints_and_never_raises():
    text = shown("train", ["not", "a", "dict"])
    assert "no summary for this result" in text and json.dumps(["not", "a", "dict"]) in text


def test_names_with_brackets_print_as_written():
    text = shown("rollback", {"model": "[bold]m[/bold]", "champion_version": 1, "rolled_back_version": 2})
    assert "[bold]m[/bold]" in text


def test_batch_ids_and_counts_are_never_wrapped_in_an_80_column_table():
    long = {**BATCH, "source": "/data/orders_v3_badvalues.csv", "batch_id": "4f9e2b6541266422c9de"}
    text = shown("ingest", {**long, "rows_in": 1_000_000, "rows_clean": 999_000, "rows_quarantined": 1_000})
    assert "4f9e2b6541266422c9de" in text and "1,000,000" in text and "999,000" in text, text
