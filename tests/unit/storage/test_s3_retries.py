"""The S3 retry settings reach each client as that client counts them (tries vs retries), bad values are
refused naming the variable, and the environment the user set for MLflow's client wins over loopline's."""

from __future__ import annotations

import os

import pytest

from loopline.errors import ConfigError
from loopline.storage.lake import make_s3_client, s3_storage_options
from loopline.storage.s3_retries import configure_mlflow_s3


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("LOOPLINE_S3_MAX_ATTEMPTS", "LOOPLINE_S3_RETRY_MODE", "LOOPLINE_S3_READ_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_reach_boto3_and_delta_rs_as_each_counts_them():
    client = make_s3_client("http://127.0.0.1:9", "us-east-1", "k", "s")
    assert client.meta.config.retries == {"total_max_attempts": 10, "mode": "standard"}
    assert (client.meta.config.connect_timeout, client.meta.config.read_timeout) == (5.0, 60.0)
    opts = s3_storage_options("http://127.0.0.1:9", None, "k", "s")
    assert {k: opts[k] for k in ("max_retries", "retry_timeout", "timeout", "connect_timeout")} == {
        "max_retries": "9",  # retries after the first try: 10 tries in all, as boto3's
        "retry_timeout": "180000ms",
        "timeout": "60000ms",
        "connect_timeout": "5000ms",
    }


def test_the_environment_changes_them(monkeypatch):
    monkeypatch.setenv("LOOPLINE_S3_MAX_ATTEMPTS", "4")
    monkeypatch.setenv("LOOPLINE_S3_RETRY_MODE", "adaptive")
    monkeypatch.setenv("LOOPLINE_S3_READ_TIMEOUT", "2.5")
    client = make_s3_client(None, None, None, None)
    assert client.meta.config.retries == {"total_max_attempts": 4, "mode": "adaptive"}
    assert s3_storage_options(None, None, None, None)["timeout"] == "2500ms"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LOOPLINE_S3_MAX_ATTEMPTS", "0"),
        ("LOOPLINE_S3_MAX_ATTEMPTS", "ten"),
        ("LOOPLINE_S3_RETRY_MODE", "fast"),
    ],
)
def test_a_bad_value_names_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        s3_storage_options(None, None, None, None)


def test_mlflow_gets_loopline_retries_unless_the_user_set_them(monkeypatch):
    monkeypatch.setenv("AWS_RETRY_MODE", "legacy")  # the user's choice stays
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "")
    monkeypatch.delenv("AWS_MAX_ATTEMPTS")  # recorded, so what configure sets is undone afterwards
    configure_mlflow_s3()
    assert os.environ["AWS_MAX_ATTEMPTS"] == "10" and os.environ["AWS_RETRY_MODE"] == "legacy"
