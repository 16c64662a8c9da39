"""The pieces of ingest that need no lake: the schemas' one type map, and the per-file step's handling of an
unreadable file (raised alone, that file's rejection in a folder) and of its scratch folder."""

from pathlib import Path

import pyarrow as pa
import pytest

from loopline.config import LifecycleConfig
from loopline.data import ingest
from loopline.data.contracts import TYPES, load_contract
from loopline.data.schemas import ARROW_TYPES, clean_schema, quarantine_schema, raw_schema
from loopline.errors import SourceError
from loopline.serving.inference_log import log_schema
from loopline.storage import sources
from loopline.storage.lake import Lake

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def contract():
    return load_contract(REPO / "contracts" / "demo.yaml")


def test_every_contract_type_has_one_arrow_type():
    assert set(ARROW_TYPES) == set(TYPES)


def test_clean_and_the_inference_log_type_columns_alike(contract):
    clean, logged = clean_schema(contract), log_schema(contract)
    for name in contract.column_names:
        assert clean.field(name).type == ARROW_TYPES[contract.columns[name].type]
        if name != contract.label:
            assert logged.field(name).type == clean.field(name).type


def test_raw_keeps_text_and_quarantine_adds_reasons(contract):
    raw = raw_schema(contract)
    assert all(raw.field(c).type == pa.string() for c in contract.column_names)
    assert raw.names[-5:] == ["_extra", "_batch_id", "_source", "_ingested_at", "_row"]
    assert quarantine_schema(contract).names == [*raw.names, "_reasons"]


def test_an_unreadable_file_raises_alone_and_is_rejected_in_a_folder(contract, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    monkeypatch.setattr(sources, "scratch_dir", lambda: str(scratch.mkdir() or scratch))
    bad = tmp_path / "notes.txt"
    bad.write_text("not data\n")
    lake, cfg = Lake.from_env(str(tmp_path / "home")), LifecycleConfig(home=str(tmp_path / "home"))

    with pytest.raises(SourceError):
        ingest.ingest_file(str(bad), contract, lake, cfg)
    assert not scratch.exists()  # its own scratch folder, removed

    result = ingest.ingest_file(str(bad), contract, lake, cfg, in_folder=True)
    assert not result.accepted and result.batch_id == "" and result.source == str(bad)
    assert "notes.txt" in result.reason and not scratch.exists()

    workdir = tmp_path / "shared"
    workdir.mkdir()
    ingest.ingest_file(str(bad), contract, lake, cfg, workdir=str(workdir), in_folder=True)
    assert workdir.exists()  # a caller's workdir is the caller's to remove
