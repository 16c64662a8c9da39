"""Dataset and model names that become lake paths: one validator, at every place a name becomes a path, so
`../x` cannot write outside its folder. The core functions refuse before they touch anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopline.config import LifecycleConfig
from loopline.errors import InvalidNameError, LooplineError
from loopline.storage.lake import Lake
from loopline.storage.names import NAME_PATTERN, check_name, is_valid_name

GOOD = ["demo", "churn-v2", "credit_model", "fraud.eu", "Model.v1.2", "_staging", "a" * 128, "x1"]
BAD = ["", "..", "../evil", "a/b", "a\\b", "..\\evil", ".hidden", "-flag", "a..b", "bad name", "a" * 129, "é"]


@pytest.mark.parametrize("name", GOOD)
def test_names_people_use_pass(name):
    assert is_valid_name(name) and check_name(name, "model") == name


@pytest.mark.parametrize("name", BAD)
def test_names_that_would_leave_their_folder_are_refused_naming_the_name_and_the_pattern(name):
    with pytest.raises(InvalidNameError) as caught:
        check_name(name, "dataset")
    err = caught.value
    assert isinstance(err, LooplineError) and err.exit_code == 2
    assert repr(name) in str(err) and NAME_PATTERN in str(err) and "dataset name" in str(err)


def test_the_lake_refuses_bad_names_in_every_table_and_folder(tmp_path):
    lake = Lake(root=str(tmp_path / "lake"))
    for kind in ("raw", "quarantine", "clean", "features"):
        with pytest.raises(InvalidNameError, match="invalid dataset name '../evil'"):
            lake.table_uri(kind, "../evil")
    with pytest.raises(InvalidNameError, match="invalid model name '../evil'"):
        lake.table_uri("predictions", "../evil")
    for folder, what in (("checkpoints", "model"), ("drift", "model"), ("batches", "dataset")):
        with pytest.raises(InvalidNameError, match=f"invalid {what} name"):
            lake.uri(folder, "../evil", "run")
    with pytest.raises(InvalidNameError, match="lake path part"):
        lake.uri("checkpoints", "demo", "../../escape")
    # the names in use keep their paths
    assert lake.uri("checkpoints", "churn-v2", "abc123") == str(tmp_path / "lake/checkpoints/churn-v2/abc123")
    assert lake.table_uri("predictions", "fraud.eu").endswith("/lake/predictions/fraud.eu")
    s3 = Lake(root="s3://bucket/prefix")
    assert s3.table_uri("clean", "credit_model") == "s3://bucket/prefix/clean/credit_model"
    with pytest.raises(InvalidNameError):
        s3.table_uri("clean", "../../other-prefix")


def test_core_functions_refuse_before_writing(tmp_path):
    """Where a dataset or model name enters the core: the contract registry, training's inputs and
    checkpoints, the serving log. Nothing is created anywhere under tmp_path."""
    from loopline.data.contract_registry import contract_versions
    from loopline.serving.inference_log import InferenceLog
    from loopline.train import run_training
    from loopline.train.checkpoint import CheckpointStore

    lake = Lake(root=str(tmp_path / "home" / "lake"))
    cfg = LifecycleConfig(home=str(tmp_path / "home"))
    with pytest.raises(InvalidNameError, match="dataset name '../evil'"):
        contract_versions(lake, "../evil")
    with pytest.raises(InvalidNameError, match="dataset name '../evil'"):
        run_training(cfg, "../evil", lake=lake)
    with pytest.raises(InvalidNameError, match="model name '../evil'"):
        CheckpointStore(lake, lake.uri("checkpoints", "../evil", "key"), keep_last=1)
    with pytest.raises(InvalidNameError, match="model name '../evil'"):
        InferenceLog(lake, "../evil", None, max_queue_rows=10, flush_rows=10, flush_seconds=1.0)  # type: ignore[arg-type]
    assert sorted(str(p.relative_to(tmp_path)) for p in Path(tmp_path).rglob("*")) == []
