"""Infra validation runs the model server's loader in a fork of one warm template: fast because the imports
are paid once, isolated because every validation starts from the template's clean state. A crash, a hang or
a model's side effects reach neither the caller nor the next validation. Real bundles, real processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from loopline.data.contracts import load_contract
from loopline.release.infra_template import template_for
from loopline.release.infra_validation import SERVING_LOADER, sample_rows, validate_bundle
from tests.serving_support import DEMO_CONTRACT, make_bundle

FACTORIES = "tests.unit.release.infra_factories"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("infra-bundles")
    good = make_bundle(root / "good")
    out = {"good": good}
    for name in ("crash", "hang", "leaky", "observer"):
        path = make_bundle(root / name)  # the built-in MLP's weights, then another factory named
        meta = json.loads((path / "bundle.json").read_text())
        meta["factory"] = f"{FACTORIES}:{name}"
        (path / "bundle.json").write_text(json.dumps(meta))
        out[name] = path
    return out


@pytest.fixture
def env(monkeypatch, tmp_path):
    # the child takes the caller's environment at each validation (as it is then), cwd included
    monkeypatch.setenv("LOOPLINE_MODEL_MODULES", FACTORIES)
    monkeypatch.setenv("LOOPLINE_OBSERVE", str(tmp_path / "observed.json"))
    monkeypatch.chdir(Path(__file__).resolve().parents[3])
    return tmp_path / "observed.json"


def validate(bundle, timeout_s: float = 120.0, rows=None):
    contract = load_contract(DEMO_CONTRACT)
    rows = sample_rows(contract, None, 0) if rows is None else rows
    return validate_bundle(bundle, rows, contract, model="m", version="1", timeout_s=timeout_s)


def test_one_template_serves_many_validations_and_nothing_leaks_between_them(bundles, env, monkeypatch):
    first = validate(bundles["good"])
    assert first["ok"], first["reason"]
    assert first["loader"] == SERVING_LOADER and first["rows"] == 5
    template_pid = template_for().proc.pid

    leaky = validate(bundles["leaky"])  # a valid model: it passes, and leaves traces in its own process
    assert leaky["ok"], leaky["reason"]
    monkeypatch.setenv("LOOPLINE_OBSERVE_TOKEN", "now")  # set after the template started
    observed = validate(bundles["observer"])
    assert observed["ok"], observed["reason"]
    seen = json.loads(env.read_text())
    assert seen["numpy_leak"] is False and seen["env_leak"] is False  # the leak died with its child
    assert seen["mlflow_imported"] is False  # the lean path: the server's loader, no mlflow
    assert seen["seen"] == "now"  # the caller's environment as it is at this validation
    # the template's heap is frozen out of the collector: a child's first full collection would walk it all
    # (copy-on-write of every page), most of a small validation's time
    assert seen["frozen_objects"] > 10_000
    assert seen["pid"] not in (os.getpid(), template_pid)
    assert template_for().proc.pid == template_pid  # reused: the imports were paid once

    crashed = validate(bundles["crash"])
    assert crashed["ok"] is False and "exited with code -11" in crashed["reason"], crashed["reason"]
    assert template_for().proc.pid == template_pid  # a crash takes only its own fork

    refused = validate(bundles["good"], rows=sample_rows(load_contract(DEMO_CONTRACT), None, 0).assign(x=1))
    assert refused["ok"] is False and "would answer 422" in refused["reason"] and "'x'" in refused["reason"]


def test_a_validation_beside_other_work_runs_at_a_lower_priority(bundles, env):
    # promote() validates while it evaluates: its child yields the CPU (os.nice), a plain validation does not
    contract = load_contract(DEMO_CONTRACT)
    rows = sample_rows(contract, None, 0)
    plain = validate_bundle(bundles["observer"], rows, contract, model="m", version="1", timeout_s=120.0)
    assert plain["ok"], plain["reason"]
    base = json.loads(env.read_text())["niceness"]
    niced = validate_bundle(
        bundles["observer"], rows, contract, model="m", version="1", timeout_s=120.0, nice=5
    )
    assert niced["ok"], niced["reason"]
    assert json.loads(env.read_text())["niceness"] == min(base + 5, 19)
    assert os.nice(0) == base  # the caller (and the template it started) keep their priority


def test_a_hanging_model_times_out_and_the_next_validation_gets_a_fresh_template(bundles, env):
    assert validate(bundles["good"])["ok"]
    before = template_for().proc.pid
    hung = validate(bundles["hang"], timeout_s=3)
    assert hung["ok"] is False and "took longer than 3 s" in hung["reason"]
    assert template_for().proc is None  # killed with its child (one process group)
    with pytest.raises(ProcessLookupError):
        os.kill(before, 0)
    again = validate(bundles["good"])
    assert again["ok"], again["reason"]
    assert template_for().proc.pid != before
