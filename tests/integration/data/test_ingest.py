"""Ingest through the gate into real Delta tables: the bad-input corpus, idempotency, crash safety."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from loopline.config import LifecycleConfig, SyntheticConfig
from loopline.data.contracts import load_contract
from loopline.data.ingest import ingest_source
from loopline.data.synthetic import generate_frame, write_source
from loopline.errors import ContractError, SourceError
from loopline.storage import delta
from loopline.storage.lake import Lake
from tests.datasets import CREDIT

CONTRACT = {**CREDIT, "quarantine_max_fraction": 0.3}
HEADER = "customer_id,age,income,segment,note,signup_at,default"


def good_rows(start: int = 1, n: int = 8) -> list[str]:
    segs = ["retail", "sme", "corp"]
    return [
        f"{i},{20 + i},{1000.5 * i},{segs[i % 3]},ok,2025-01-0{1 + i % 9}T10:00:00,{i % 2}"
        for i in range(start, start + n)
    ]


@pytest.fixture
def env(home: Path, tmp_path: Path):
    cpath = tmp_path / "credit.yaml"
    cpath.write_text(yaml.safe_dump(CONTRACT))
    cfg = LifecycleConfig(home=str(home)).model_copy(update={})
    cfg.data.contract = str(cpath)
    lake = Lake.from_env(str(home))
    return load_contract(cpath), lake, cfg, tmp_path


def csv_file(tmp_path: Path, name: str, lines: list[str]) -> Path:
    p = tmp_path / "src" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(lines) + "\n")
    return p


def table_rows(lake: Lake, kind: str, name: str = "credit") -> int:
    t = delta.open_table(lake, lake.table_uri(kind, name))
    return 0 if t is None else t.to_pyarrow_dataset().count_rows()


def ingest_one(env, path) -> dict:
    contract, lake, cfg, _ = env
    (result,) = ingest_source(str(path), contract, lake, cfg)
    out = result.as_dict()
    if out["accepted"]:
        assert out["rows_in"] == out["rows_clean"] + out["rows_quarantined"]  # nothing dropped silently
    return out


def reasons(lake: Lake) -> list[str]:
    t = delta.open_table(lake, lake.table_uri("quarantine", "credit"))
    return [] if t is None else t.to_pyarrow_dataset().to_table(columns=["_reasons"])["_reasons"].to_pylist()


# -- the bad-input corpus: (name, lines, expected) ----------------------------------------------------
ROW_CASES = [
    ("wrong_type", "9,abc,1.0,retail,ok,2025-01-01T00:00:00,1", "age"),
    ("null_label", "9,30,1.0,retail,ok,2025-01-01T00:00:00,", "default"),
    ("inf", "9,30,inf,retail,ok,2025-01-01T00:00:00,1", "income"),
    ("out_of_range", "9,130,1.0,retail,ok,2025-01-01T00:00:00,1", "age"),
    ("unknown_category", "9,30,1.0,galaxy,ok,2025-01-01T00:00:00,1", "segment"),
    ("bad_timestamp", "9,30,1.0,retail,ok,not-a-date,1", "signup_at"),
    ("bad_label_value", "9,30,1.0,retail,ok,2025-01-01T00:00:00,7", "default"),
    ("one_megabyte_string", "9,30,1.0,retail," + "x" * 1_000_000 + ",2025-01-01T00:00:00,1", "note"),
    ("duplicate_id_within_batch", "1,30,1.0,retail,ok,2025-01-01T00:00:00,1", "customer_id"),
]


@pytest.mark.parametrize(("name", "bad", "column"), ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_row_level_violation_is_quarantined_with_reason(env, name, bad, column):
    contract, lake, cfg, tmp = env
    out = ingest_one(env, csv_file(tmp, f"{name}.csv", [HEADER, *good_rows(), bad]))
    assert out["accepted"] and out["rows_in"] == 9 and out["rows_quarantined"] == 1 and out["rows_clean"] == 8
    (why,) = reasons(lake)
    assert column in why
    assert table_rows(lake, "raw") == 9 and table_rows(lake, "clean") == 8


def test_header_only_is_an_empty_accepted_batch(env):
    out = ingest_one(env, csv_file(env[3], "header.csv", [HEADER]))
    assert out["accepted"] and out["rows_in"] == 0


def test_empty_file_cannot_be_read(env):
    p = env[3] / "empty.csv"
    p.write_bytes(b"")
    with pytest.raises(SourceError, match="empty.csv"):
        ingest_one(env, p)


@pytest.mark.parametrize(
    ("name", "lines"),
    [
        ("wrong_delimiter", [HEADER.replace(",", ";"), *(r.replace(",", ";") for r in good_rows())]),
        (
            "missing_column",
            [
                HEADER.replace(",note", ""),
                *(",".join(r.split(",")[:4] + r.split(",")[5:]) for r in good_rows()),
            ],
        ),
        ("extra_column", [HEADER + ",surprise", *(r + ",boo" for r in good_rows())]),
    ],
)
def test_batch_level_column_problem_rejects_batch_and_raw_keeps_it(env, name, lines):
    contract, lake, cfg, tmp = env
    out = ingest_one(env, csv_file(tmp, f"{name}.csv", lines))
    assert not out["accepted"] and out["reason"]
    assert table_rows(lake, "raw") == len(lines) - 1  # kept for audit
    assert table_rows(lake, "clean") == 0 and table_rows(lake, "quarantine") == 0


def test_too_many_bad_rows_rejects_batch_and_clean_does_not_change(env):
    contract, lake, cfg, tmp = env
    ingest_one(env, csv_file(tmp, "good.csv", [HEADER, *good_rows()]))
    clean_before = delta.table_version(lake, lake.table_uri("clean", "credit"))
    bad = [f"{100 + i},500,1.0,retail,ok,2025-01-01T00:00:00,1" for i in range(5)]
    out = ingest_one(env, csv_file(tmp, "bad.csv", [HEADER, *good_rows(200, 5), *bad]))
    assert not out["accepted"] and "quarantine_max_fraction" in out["reason"] or "fraction" in out["reason"]
    assert delta.table_version(lake, lake.table_uri("clean", "credit")) == clean_before


def test_clean_files_written_during_the_gx_run_are_committed_or_removed(env):
    """clean/D's files are written while GX confirms the verdict: an accepted batch commits exactly them, a
    rejected batch leaves none behind, and switched off the commit writes its own (the same rows)."""
    contract, lake, cfg, tmp = env
    folder = Path(lake.table_uri("clean", "credit"))

    def on_disk() -> set[str]:
        return {p.name for p in folder.glob("*.parquet")}

    def referenced() -> set[str]:
        return {Path(f).name for f in delta.open_table(lake, lake.table_uri("clean", "credit")).file_uris()}

    ingest_one(env, csv_file(tmp, "good.csv", [HEADER, *good_rows()]))
    assert on_disk() == referenced() and len(referenced()) == 1
    bad = [f"{100 + i},500,1.0,retail,ok,2025-01-01T00:00:00,1" for i in range(5)]
    rejected = ingest_one(env, csv_file(tmp, "bad.csv", [HEADER, *good_rows(20, 5), *bad]))
    assert not rejected["accepted"] and rejected["rows_clean"] == 5
    assert on_disk() == referenced() and len(referenced()) == 1  # its 5 clean rows' file is gone
    cfg.data.prewrite_clean = False
    assert ingest_one(env, csv_file(tmp, "more.csv", [HEADER, *good_rows(9, 4)]))["rows_clean"] == 4
    assert on_disk() == referenced() and len(referenced()) == 2 and table_rows(lake, "clean") == 12


def test_non_utf8_bytes_name_the_file(env):
    p = env[3] / "latin1.csv"
    p.write_bytes(
        (HEADER + "\n").encode() + "9,30,1.0,retail,caf\xe9,2025-01-01T00:00:00,1\n".encode("latin-1")
    )
    with pytest.raises(SourceError, match="latin1.csv"):
        ingest_one(env, p)


def test_truncated_parquet_names_the_file(env):
    p = env[3] / "trunc.parquet"
    write_source(generate_frame(SyntheticConfig(rows=200)), p, "parquet")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(SourceError, match="trunc.parquet"):
        ingest_one(env, p)


def test_broken_json_line_names_file_and_line(env):
    p = env[3] / "broken.jsonl"
    p.write_text('{"customer_id": 1}\n{"customer_id": \n')
    with pytest.raises(SourceError, match=r"broken.jsonl.*line 2"):
        ingest_one(env, p)


def test_broken_contract(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text(yaml.safe_dump({**CONTRACT, "label": "nope"}))
    with pytest.raises(ContractError, match="broken.yaml"):
        load_contract(p)


def test_duplicate_ids_across_batches_first_arrival_wins(env):
    contract, lake, cfg, tmp = env
    ingest_one(env, csv_file(tmp, "a.csv", [HEADER, *good_rows(1, 8)]))
    out = ingest_one(env, csv_file(tmp, "b.csv", [HEADER, *good_rows(7, 8)]))  # ids 7 and 8 seen before
    assert out["accepted"] and out["rows_clean"] == 8 - 2 and out["rows_quarantined"] == 2
    ids = delta.read_column(lake, lake.table_uri("clean", "credit"), ["customer_id"])[
        "customer_id"
    ].to_pylist()
    assert sorted(ids) == list(range(1, 15))
    assert all("customer_id" in r for r in reasons(lake))


def test_folder_mixing_good_and_bad_files(env):
    contract, lake, cfg, tmp = env
    folder = tmp / "landing"
    csv_file(tmp, "../landing/1-good.csv", [HEADER, *good_rows(1, 8)])
    csv_file(
        tmp,
        "../landing/2-missing-col.csv",
        [HEADER.replace(",note", ""), "50,30,1.0,retail,2025-01-01T00:00:00,1"],
    )
    (folder / "3-empty.csv").write_bytes(b"")
    csv_file(tmp, "../landing/4-good.csv", [HEADER, *good_rows(20, 4)])
    results = ingest_source(str(folder), contract, lake, cfg)
    assert [r.accepted for r in results] == [True, False, False, True]
    assert "3-empty.csv" in results[2].reason
    assert table_rows(lake, "clean") == 12


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_every_format_lands_the_same_rows(home, tmp_path, fmt):
    cfg = LifecycleConfig(home=str(home))
    contract = load_contract(Path(__file__).resolve().parents[3] / "contracts" / "demo.yaml")
    lake = Lake.from_env(str(home))
    frame = generate_frame(SyntheticConfig(rows=600, seed=3, bad_fraction=0.02))
    src = write_source(frame, tmp_path / f"demo.{fmt}", fmt)
    (r,) = ingest_source(str(src), contract, lake, cfg)
    assert r.accepted and r.rows_in == 600 and r.rows_clean + r.rows_quarantined == 600
    assert r.rows_quarantined >= 10  # 12 injected violations, some may share a row kind
    clean = delta.open_table(lake, lake.table_uri("clean", "demo")).to_pandas()
    assert clean["customer_id"].is_unique and clean["churned"].isin([0, 1]).all()


def test_same_source_twice_is_a_duplicate_no_op(env):
    contract, lake, cfg, tmp = env
    p = csv_file(tmp, "a.csv", [HEADER, *good_rows()])
    first = ingest_one(env, p)
    second = ingest_one(env, p)
    assert not first["duplicate_batch"] and second["duplicate_batch"]
    assert second["batch_id"] == first["batch_id"] and second["rows_clean"] == first["rows_clean"]
    assert second["raw_version"] == first["raw_version"] and table_rows(lake, "raw") == 8


def test_retry_after_crash_half_way_leaves_no_duplicates(env, monkeypatch):
    contract, lake, cfg, tmp = env
    p = csv_file(tmp, "a.csv", [HEADER, *good_rows(), "1,30,1.0,retail,ok,2025-01-01T00:00:00,1"])
    real = delta.append_once
    calls = {"n": 0}

    def crash_on_clean(lake_, uri, data, **kw):
        if "/clean/" in uri and calls["n"] == 0:
            calls["n"] += 1
            raise OSError("simulated crash before the clean commit")
        return real(lake_, uri, data, **kw)

    monkeypatch.setattr(delta, "append_once", crash_on_clean)
    with pytest.raises(OSError, match="simulated"):
        ingest_one(env, p)
    # raw, then clean, then quarantine: the clean commit decides the last quarantined rows
    assert (
        table_rows(lake, "raw") == 9
        and table_rows(lake, "quarantine") == 0
        and table_rows(lake, "clean") == 0
    )
    out = ingest_one(env, p)  # the retry
    assert out["accepted"] and not out["duplicate_batch"]
    assert (
        table_rows(lake, "raw") == 9
        and table_rows(lake, "quarantine") == 1
        and table_rows(lake, "clean") == 8
    )
    assert ingest_one(env, p)["duplicate_batch"]


def test_quarantine_keeps_the_original_text_and_metadata(env):
    contract, lake, cfg, tmp = env
    ingest_one(
        env, csv_file(tmp, "a.csv", [HEADER, *good_rows(), "9,abc,1.0,retail,ok,2025-01-01T00:00:00,1"])
    )
    q = delta.open_table(lake, lake.table_uri("quarantine", "credit")).to_pandas()
    row = q.iloc[0]
    assert row["age"] == "abc" and row["_row"] == 8 and row["_batch_id"] and row["_source"].endswith("a.csv")
    assert json.loads(json.dumps(row["_reasons"]))
    assert isinstance(pd.Timestamp(row["_ingested_at"]), pd.Timestamp)
