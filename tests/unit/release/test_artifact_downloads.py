"""The loader gate's downloads (loopline.packaging.safe_load._download) keep MLflow's artifact repository of
each artifact root, so its download threads start once per process, not once per file; what is downloaded is
still read afresh every time."""

from __future__ import annotations

import threading

import loopline.packaging.safe_load as safe_load


def test_downloads_from_one_root_share_a_repository_and_still_read_the_files_afresh(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_load, "_artifact_repos", safe_load.ComputeCache(8))
    root = tmp_path / "artifacts"
    (root / "bundle").mkdir(parents=True)
    (root / "bundle" / "bundle.json").write_text("{}")
    (root / "MLmodel").write_text("flavors: {}\n")
    uri = root.as_uri()

    got = safe_load._download(f"{uri}/MLmodel", str(tmp_path / "a"), "sqlite:///unused.db", "m", 1)
    assert got.read_text() == "flavors: {}\n"
    threads_after_first = threading.active_count()
    bundle = safe_load._download(f"{uri}/bundle", str(tmp_path / "b"), "sqlite:///unused.db", "m", 1)
    assert (bundle / "bundle.json").read_text() == "{}"
    (root / "MLmodel").write_text("flavors: {python_function: {}}\n")  # rewritten: read again, not kept
    again = safe_load._download(f"{uri}/MLmodel", str(tmp_path / "c"), "sqlite:///unused.db", "m", 1)
    assert again.read_text() == "flavors: {python_function: {}}\n"

    assert len(safe_load._artifact_repos.data) == 1  # one repository for the root, its threads reused
    assert threading.active_count() <= threads_after_first + 1


def test_a_missing_artifact_is_a_model_error(tmp_path):
    import pytest

    from loopline.errors import ModelError

    root = tmp_path / "artifacts"
    root.mkdir()
    with pytest.raises(ModelError, match="cannot download MLmodel"):
        safe_load._download(f"{root.as_uri()}/MLmodel", str(tmp_path / "a"), "sqlite:///unused.db", "m", 1)
