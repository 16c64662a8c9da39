"""`loopline init`: a contract drafted from a sample (scikit-learn's bundled datasets, and a frame of every
type) infers types, nulls, ranges, categories, the id, the label and the task, reads back with
load_contract, and ingests its own sample into a real Delta lake with no quarantined row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.config import LifecycleConfig, ValidationConfig
from loopline.data.contracts import load_contract
from loopline.data.draft import MARGIN, draft_contract, write_draft
from loopline.data.draft import columns as draft_columns
from loopline.data.ingest import ingest_source
from loopline.data.validation.gate import Gate
from loopline.errors import ConfigError
from loopline.storage import sources
from loopline.storage.lake import Lake

REPO = Path(__file__).resolve().parents[3]
FORMATS = ("csv", "parquet", "jsonl")
# every third/fifth/fourth row: small samples that still hold every class
SKLEARN = {"cancer": ("load_breast_cancer", 5), "wine": ("load_wine", 3), "diabetes": ("load_diabetes", 4)}
TASKS = {"cancer": "binary", "wine": "multiclass", "diabetes": "regression"}


def _write(df: pd.DataFrame, path: Path) -> Path:
    fmt = path.suffix.lstrip(".")
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_json(path, orient="records", lines=True, date_format="iso", double_precision=15)
    return path


def _ingest(sample: Path, contract, root: Path):
    home = root / f"home-{sample.name}"
    cfg = LifecycleConfig(home=str(home), validation={"data_docs": False})
    [result] = ingest_source(str(sample), contract, Lake(root=str(home / "lake")), cfg)
    return result


@pytest.fixture(scope="module")
def sklearn_frames() -> dict[str, pd.DataFrame]:
    import sklearn.datasets

    frames = {}
    for name, (loader, step) in SKLEARN.items():
        df = getattr(sklearn.datasets, loader)(as_frame=True).frame.iloc[::step].reset_index(drop=True)
        df.insert(0, "id", np.arange(1, len(df) + 1))
        frames[name] = df
    return frames


@pytest.fixture(scope="module")
def mixed_frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 40
    return pd.DataFrame(
        {
            "note": [f"free text {i}" for i in range(n)],  # unique too, but not named like an id
            "order_key": [f"K-{i:04d}" for i in range(n)],
            "placed_at": pd.date_range("2024-01-01", periods=n, freq="37h"),
            "gift": rng.random(n) < 0.3,
            "amount": np.where(np.arange(n) % 5 == 0, np.nan, rng.normal(50, 10, n).round(2)),
            "colour": rng.choice(["red", "green", "blue", "on"], n),  # "on" reads as a bool in YAML 1.1
            "qty": pd.array(
                [None if i % 7 == 0 else int(v) for i, v in enumerate(rng.integers(1, 9, n))], "Int64"
            ),
            "delta": rng.normal(-5, 1, n).round(3).clip(None, -0.5),  # all negative: max stays <= 0
            "outcome": rng.choice(["yes", "no", "maybe"], n),
        }
    )


# -- the bundled datasets, in every format -----------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(SKLEARN))
def test_sklearn_sample_drafts_its_contract_and_ingests_clean(sklearn_frames, name, fmt, tmp_path):
    df = sklearn_frames[name]
    sample = _write(df, tmp_path / f"{name}.{fmt}")
    draft = draft_contract(str(sample))
    contract = load_contract(write_draft(draft, tmp_path / "draft.yaml"))

    assert contract.dataset == name and contract.task == TASKS[name]
    assert (contract.id, contract.label) == ("id", "target")
    assert draft.rows == len(df)
    features = [c for c in df.columns if c not in ("id", "target")]
    assert {c: contract.columns[c].type for c in features} == dict.fromkeys(features, "float")
    assert contract.columns["id"].type == "int" and contract.columns["id"].unique
    assert contract.columns["id"].min is None and contract.columns["id"].max is None  # ids grow
    if TASKS[name] == "regression":
        assert contract.columns["target"].type == "float" and contract.classes is None
    else:
        assert contract.columns["target"].type == "int"
        assert contract.classes == sorted(df["target"].unique().tolist())
    for col in features + (["target"] if TASKS[name] == "regression" else []):
        spec, lo, hi = contract.columns[col], df[col].min(), df[col].max()
        assert spec.min <= lo and hi <= spec.max and not spec.nullable
        # the margin and the rounding outward (at most a hundredth of the width each side), no more
        assert spec.max - spec.min <= (hi - lo) * (1 + 2 * MARGIN + 0.02) + 1e-12
        if lo >= 0:
            assert spec.min >= 0  # never across zero

    result = _ingest(sample, contract, tmp_path)
    assert result.accepted and result.rows_quarantined == 0 and result.rows_clean == len(df)


def test_the_same_data_drafts_the_same_contract_in_every_format(sklearn_frames, tmp_path):
    for name, df in sklearn_frames.items():
        drafts = [draft_contract(str(_write(df, tmp_path / f"{name}.{fmt}"))) for fmt in FORMATS]
        assert drafts[0].contract.raw == drafts[1].contract.raw == drafts[2].contract.raw, name


# -- every type --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_type_nulls_and_categories(mixed_frame, fmt, tmp_path):
    sample = _write(mixed_frame, tmp_path / f"orders.{fmt}")
    draft = draft_contract(str(sample))
    contract = load_contract(write_draft(draft, tmp_path / "orders.yaml"))
    cols = contract.columns

    assert {c: s.type for c, s in cols.items()} == {
        "note": "string",
        "order_key": "string",
        "placed_at": "timestamp",
        "gift": "bool",
        "amount": "float",
        "colour": "category",
        "qty": "int",
        "delta": "float",
        "outcome": "category",
    }
    assert contract.id == "order_key" and "note" in draft.id_reason  # named like an id wins
    assert contract.label == "outcome" and contract.task == "multiclass"
    assert contract.classes == ["maybe", "no", "yes"]  # strings, not YAML booleans
    assert cols["colour"].values == ("blue", "green", "on", "red")
    assert {c for c, s in cols.items() if s.nullable} == {"amount", "qty"}
    assert cols["qty"].min == 0 and cols["qty"].max >= 8  # ints rounded outward, not below 0
    assert mixed_frame["delta"].max() <= cols["delta"].max <= 0  # all negative: the max stays <= 0
    assert (
        cols["amount"].min <= mixed_frame["amount"].min()
        and cols["amount"].max >= mixed_frame["amount"].max()
    )
    comments = {
        line.split(":")[0].strip(): line.split("#", 1)[1]
        for line in draft.text.splitlines()[5:]
        if "#" in line
    }
    assert "8 null" in comments["amount"] and "6 null" in comments["qty"]
    assert f"{mixed_frame['gift'].sum()} true" in comments["gift"]

    result = _ingest(sample, contract, tmp_path)
    assert result.accepted and result.rows_quarantined == 0 and result.rows_clean == len(mixed_frame)


def test_the_text_is_commented_for_a_person(sklearn_frames, tmp_path):
    draft = draft_contract(str(_write(sklearn_frames["wine"], tmp_path / "wine.csv")))
    lines = draft.text.splitlines()
    header = [line for line in lines if line.startswith("#")]
    assert "wine.csv (60 rows)" in header[0]
    assert any(f"{MARGIN:.0%}" in line for line in header)  # the margin is stated
    assert any("<= 20 distinct" in line for line in header)  # the category threshold is stated
    alcohol = next(line for line in lines if line.lstrip().startswith("alcohol:"))
    assert "# observed" in alcohol and "distinct" in alcohol
    target = next(line for line in lines if line.lstrip().startswith("target:"))
    assert "values: [0, 1, 2]" in target and "classes" in target


@pytest.mark.parametrize(
    ("values", "task", "classes"),
    [
        ([True, False] * 4, "binary", [False, True]),
        (["0.0", "1.0"] * 4, "binary", [0.0, 1.0]),
        ([0, 1, 2, 3] * 2, "multiclass", [0, 1, 2, 3]),
        (list(range(30)), "regression", None),
        ([0.5 * i for i in range(8)], "regression", None),
    ],
)
def test_the_task_follows_the_label(values, task, classes, tmp_path):
    df = pd.DataFrame({"row_id": range(len(values)), "x": range(len(values)), "y": values})
    contract = draft_contract(str(_write(df, tmp_path / "t.csv"))).contract
    assert (contract.label, contract.task, contract.classes) == ("y", task, classes)


def test_label_errors(tmp_path):
    df = pd.DataFrame({"id": [1, 2, 3, 4], "x": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(ConfigError, match="--label"):
        draft_contract(str(_write(df, tmp_path / "nolabel.csv")))
    assert draft_contract(str(tmp_path / "nolabel.csv"), label="x").contract.task == "regression"
    with pytest.raises(ConfigError, match=r"label 'y' is empty in 1 row"):
        draft_contract(str(_write(df.assign(y=[0, 1, None, 1]), tmp_path / "nulllabel.csv")))
    with pytest.raises(ConfigError, match="one value"):
        draft_contract(str(_write(df.assign(y=1), tmp_path / "onevalue.csv")))


# -- the id ------------------------------------------------------------------------------------------------
def test_no_usable_id_is_an_error_naming_every_rejected_column(tmp_path):
    df = pd.DataFrame(
        {
            "score": [0.5, 1.5, 2.5, 3.5],
            "name": ["ann", "bob", "ann", "cy"],
            "code": pd.array([1, None, 3, 4], "Int64"),
            "seen": pd.date_range("2024-01-01", periods=4),
            "y": [0, 1, 0, 1],
        }
    )
    with pytest.raises(ConfigError) as err:
        draft_contract(str(_write(df, tmp_path / "noid.csv")))
    message = str(err.value)
    for part in (
        "score (float)",
        "seen (timestamp)",
        "not int or string",
        "name (1 duplicate)",
        "not unique",
    ):
        assert part in message
    assert "code (1 null)" in message and "--id" in message and "add an id column" in message.lower()
    assert "y (" not in message  # the label is never a candidate


def test_a_given_id_is_checked_and_preferred_names_win(tmp_path):
    df = pd.DataFrame(
        {"n": [5, 6, 7, 8], "name": ["a", "b", "a", "c"], "customer_id": [9, 3, 4, 1], "y": [0, 1, 0, 1]}
    )
    sample = str(_write(df, tmp_path / "ids.csv"))
    assert draft_contract(sample).id == "customer_id"  # *_id beats the first unique column
    assert draft_contract(sample, id_column="n").id == "n"
    with pytest.raises(ConfigError, match=r"--id 'name'.*1 duplicate value"):
        draft_contract(sample, id_column="name")
    with pytest.raises(ConfigError, match=r"--id 'nope' is not a column"):
        draft_contract(sample, id_column="nope")
    # one repeat in 300 rows of a column named with --id: a stray the gate quarantines, said in the draft
    orders = pd.DataFrame({"order_id": [*range(299), 7], "y": [i % 2 for i in range(300)]})
    given = draft_contract(str(_write(orders, tmp_path / "orders.csv")), id_column="order_id")
    assert given.id == "order_id" and "but for 1 repeated value(s)" in given.summary()["id_reason"]
    spelled = pd.DataFrame(
        {"id": ["7", "07", "8", "9"], "y": [0, 1, 0, 1]}
    )  # 7 twice, as the gate reads ints
    with pytest.raises(ConfigError, match="not unique"):
        draft_contract(str(_write(spelled, tmp_path / "spelled.csv")))


# -- writing -----------------------------------------------------------------------------------------------
def test_an_existing_file_is_kept_unless_forced(sklearn_frames, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    draft = draft_contract(str(_write(sklearn_frames["wine"], tmp_path / "my wine.v2.csv")))
    assert draft.dataset == "my_wine_v2"
    path = write_draft(draft)
    assert path == Path("contracts/my_wine_v2.yaml") and load_contract(path).task == "multiclass"
    path.write_text("# mine\n")
    with pytest.raises(ConfigError, match=r"contracts/my_wine_v2.yaml already exists.*--force"):
        write_draft(draft)
    assert path.read_text() == "# mine\n"
    write_draft(draft, force=True)
    assert path.read_text() == draft.text
    with pytest.raises(ConfigError, match="dataset name"):
        draft_contract(str(tmp_path / "my wine.v2.csv"), name="bad name")


# -- any text the gate can be handed -----------------------------------------------------------------------
_TEXT = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
    st.sampled_from(["true", "FALSE", "0", "1", " 3 ", "3.0", "1e3", "", "  ", "nan", "yes", "2024-02-30"]),
    st.sampled_from(["2024-01-01", "2024-01-01T10:00:00+02:00", "2024-03-01 12:30", "0x1F", "+7", "-0"]),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=6),
)
_COLUMN = st.one_of(
    st.lists(st.one_of(st.none(), _TEXT), min_size=12, max_size=12),
    st.lists(_TEXT, min_size=1, max_size=3).flatmap(  # few distinct values: categories, classes
        lambda pool: st.lists(st.one_of(st.none(), st.sampled_from(pool)), min_size=12, max_size=12)
    ),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(columns=st.lists(_COLUMN, min_size=1, max_size=4))
def test_any_sample_passes_the_gate_under_its_draft(columns):
    """Whatever text a column holds, its drafted contract quarantines no row of the sample (the gate's
    numpy pass on the chunk the ingest reader produces)."""
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "any.jsonl"
        records = [
            {"id": i, **{f"c{j}": col[i] for j, col in enumerate(columns)}, "y": i % 2} for i in range(12)
        ]
        sample.write_bytes(b"\n".join(orjson.dumps(r) for r in records) + b"\n")
        contract = draft_contract(str(sample)).contract
        src = sources.fetch(str(sample), Lake(root=tmp), tmp)
        [chunk] = sources.read_chunks(src, contract.column_names, 1000)
        verdict = Gate(contract, cfg=ValidationConfig(data_docs=False)).validate_chunk(chunk)
        assert verdict.quarantine.empty, verdict.quarantine["_reasons"].tolist()


def test_margins_never_cross_zero():
    widen = draft_columns._widen
    assert widen(0.0, 10.0, is_int=False) == (0.0, 11.0)
    assert widen(-10.0, -1.0, is_int=False) == (-10.9, -0.1)
    assert widen(-10.0, 0.0, is_int=False) == (-11.0, 0.0)
    assert widen(3, 3, is_int=True) == (2, 4)  # a constant: MARGIN of its size, rounded outward
    assert widen(-5, 5, is_int=True) == (-6, 6)
    assert widen(0.0, 0.0, is_int=False) == (0.0, 0.0)
    lo, hi = widen(0.1234, 0.9876, is_int=False)
    assert lo <= 0.1234 and hi >= 0.9876 and len(repr(hi)) < 8


# -- the CLI -----------------------------------------------------------------------------------------------
def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "init", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )


def test_cli_init_writes_the_draft_and_fails_cleanly(sklearn_frames, tmp_path):
    sample = _write(sklearn_frames["cancer"], tmp_path / "cancer.csv")
    good = _cli("--from", str(sample), "--name", "tumours", "--json", cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    out = json.loads(good.stdout.strip().splitlines()[-1])
    assert (out["dataset"], out["id"], out["label"], out["task"]) == ("tumours", "id", "target", "binary")
    assert load_contract(tmp_path / "contracts" / "tumours.yaml").task == "binary"

    no_id = _write(sklearn_frames["cancer"].drop(columns="id"), tmp_path / "noid.csv")
    bad = _cli("--from", str(no_id), cwd=tmp_path)
    assert bad.returncode == 2
    assert "no column can be the id" in bad.stderr and "mean radius (float)" in bad.stderr
    assert "--id" in bad.stderr and "Traceback" not in bad.stderr + bad.stdout
    assert not (tmp_path / "contracts" / "noid.yaml").exists()


def test_a_few_stray_values_leave_a_numeric_column_numeric_and_named(tmp_path):
    """A typo and an 'n/a' in 300 rows (under 1%) do not turn a float column into text, whose only feature
    would be its length: it drafts float, the comment names the strays, and the gate quarantines those two
    rows with their column; a column with many strays stays a string."""
    rng = np.random.default_rng(0)
    x = [f"{v:.3f}" for v in rng.normal(size=300)]
    x[10], x[40] = "n/a", "12,5"
    noisy = [str(v) for v in range(300)]
    for i in range(0, 300, 20):
        noisy[i] = "unknown"  # 5%: not a few
    frame = pd.DataFrame({"id": range(300), "x": x, "noisy": noisy, "y": [i % 2 for i in range(300)]})
    sample = _write(frame, tmp_path / "stray.csv")
    draft = draft_contract(str(sample))
    spec = draft.contract.columns
    assert spec["x"].type == "float" and not spec["x"].nullable and spec["noisy"].type == "string"
    comment = next(c.comment for c in draft.columns if c.name == "x")
    assert "2 row(s)" in comment and "'n/a'" in comment and "'12,5'" in comment, comment
    result = _ingest(sample, draft.contract, tmp_path)
    assert result.rows_quarantined == 2 and result.rows_clean == 298
