"""`Lake.environment` is the inverse of `Lake.from_env` (a child started with it reads the parent's lake), and a
process that `LOOPLINE_LAKE_BLOCK` names a block for, but that was not handed the block's lake, refuses to
read another one."""

from __future__ import annotations

import pytest

from loopline.errors import ConfigError
from loopline.storage.lake import Lake

LAKE_VARS = (
    "LOOPLINE_LAKE_URI",
    "LOOPLINE_LAKE_RESOLVED",
    "LOOPLINE_LAKE_BLOCK",
    "LOOPLINE_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)


@pytest.fixture
def clean_env(monkeypatch):
    for var in LAKE_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_a_child_given_the_environment_reads_the_same_s3_lake(clean_env):
    lake = Lake("s3://b/p", "http://127.0.0.1:9000", "eu-west-1", "key", "secret")
    for name, value in lake.environment().items():
        clean_env.setenv(name, value)
    assert Lake.from_env("/elsewhere") == lake
    assert lake.environment()["AWS_SECRET_ACCESS_KEY"] == "secret"  # the child needs it: env only


def test_a_relative_local_root_travels_absolute_and_no_keys_are_invented(clean_env, tmp_path):
    clean_env.chdir(tmp_path)
    env = Lake("lake").environment()
    assert env["LOOPLINE_LAKE_URI"] == str(tmp_path / "lake")
    assert not any(name.startswith("AWS_") for name in env)


def test_a_named_block_without_its_lake_is_refused_not_guessed(clean_env):
    clean_env.setenv("LOOPLINE_LAKE_BLOCK", "prod-lake")
    with pytest.raises(ConfigError, match="LOOPLINE_LAKE_BLOCK='prod-lake'"):
        Lake.from_env("/home")
    for name, value in Lake("s3://b/p", region="us-east-1").environment().items():
        clean_env.setenv(name, value)  # what the flow layer hands a child after loading the block
    assert Lake.from_env("/home").root == "s3://b/p"


def test_a_local_lake_root_is_absolute_so_two_directories_never_share_a_key(tmp_path, monkeypatch):
    """`./.loopline` in two clones named the same lake root: the features task's cache key (which names the
    root) hit the other clone's cached result, and a fresh clone's `make demo` trained on no features."""
    from loopline.storage.lake import Lake

    monkeypatch.delenv("LOOPLINE_LAKE_URI", raising=False)
    monkeypatch.delenv("LOOPLINE_LAKE_BLOCK", raising=False)
    roots = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        roots.append(Lake.from_env("./.loopline").root)
    assert roots == [str(tmp_path / n / ".loopline" / "lake") for n in ("one", "two")]
