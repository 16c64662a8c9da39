"""Promotion end to end on real components: a Delta lake built by ingest + features, models trained by
run_training and registered in a real MLflow (SQLite), infra validation in a fork of the warm template.

Two models are trained once per module (a good one and a crippled one: lr=0, one step). Each test copies
the versions it needs into a registered model of its own, so aliases and history never leak between tests.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import mlflow.pyfunc
import pytest
import torch

from loopline.config import LifecycleConfig
from loopline.data.contracts import load_contract
from loopline.errors import ModelError
from loopline.release.champion import read_history, replay
from loopline.storage.lake import Lake

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
FAST_EVAL = {"bootstrap_samples": 200, "min_slice_rows": 50}


def inverted_on_corp(state: dict, meta: dict) -> None:
    """The good model everywhere but segment=corp, where its logit is negated (probabilities flipped):
    better overall than the crippled model, far worse on one slice. Built as a real loopline bundle: one
    hidden layer of width 2h+1 that gates the good model's h units on the corp one-hot (c):
    u = relu(z - M c), v = relu(z - M (1 - c)), w = relu(c); out = W2 u - W2 v - 2 b2 w + b2."""
    (w1, b1), (w2, b2) = (state["0.weight"], state["0.bias"]), (state["2.weight"], state["2.bias"])
    corp = torch.zeros(w1.shape[1])
    corp[meta["feature_names"].index("segment__corp")] = 1.0
    big = 1000.0  # far above any pre-activation of the good model
    state["0.weight"] = torch.cat([w1 - big * corp, w1 + big * corp, corp[None, :]])
    state["0.bias"] = torch.cat([b1, b1 - big, torch.zeros(1)])
    state["2.weight"] = torch.cat([w2, -w2, -2 * b2[:, None]], dim=1)
    meta["model_config"]["hidden_sizes"] = [2 * w1.shape[0] + 1]


def nan_weights(state: dict, meta: dict) -> None:
    """Loads fine, predicts NaN for every row: what infra validation exists to catch."""
    state["2.bias"] = torch.full_like(state["2.bias"], float("nan"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mlflow import MlflowClient

    from loopline.data.ingest import ingest_source
    from loopline.data.synthetic import generate_source
    from loopline.features import build_features
    from loopline.train import run_training

    home = tmp_path_factory.mktemp("promotion-home")
    tracking = f"sqlite:///{home / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOPLINE_HOME", str(home))
        mp.delenv("LOOPLINE_LAKE_URI", raising=False)
        mp.setenv("MLFLOW_TRACKING_URI", tracking)
        mp.setenv("LOOPLINE_CODE_VERSION", "test-code")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        cfg = LifecycleConfig(home=str(home), evaluation=FAST_EVAL)
        cfg.synthetic.rows = 6000
        lake = Lake.from_env(str(home))
        contract = load_contract(cfg.data.contract)
        source = generate_source(cfg.synthetic, home / "landing")
        (batch,) = ingest_source(str(source), contract, lake, cfg)
        assert batch.accepted
        build_features(lake, contract, cfg.features)
        small = {
            "hidden_sizes": [32],
            "batch_size": 128,
            "eval_every_steps": 100,
            "checkpoint_every_steps": 1000,
        }
        good = cfg.model_copy(
            update={"training": cfg.training.model_copy(update={**small, "max_steps": 150})}
        )
        crippled = cfg.model_copy(
            update={"training": cfg.training.model_copy(update={**small, "max_steps": 1, "lr": 0.0})}
        )
        run_training(good, "demo", lake=lake, tracking_uri=tracking, model_name="base")
        run_training(crippled, "demo", lake=lake, tracking_uri=tracking, model_name="base")
        client = MlflowClient(tracking)
        yield {
            "home": home,
            "cfg": cfg,
            "lake": lake,
            "tracking": tracking,
            "client": client,
            "good": 1,
            "crippled": 2,
        }
        torch.set_num_threads(threads)


_names = iter(range(1000))


def clone(setup, *versions: int) -> str:
    """A fresh registered model whose versions 1..n are copies of the given `base` versions."""
    client = setup["client"]
    name = f"m{next(_names)}"
    client.create_registered_model(name)
    for v in versions:
        mv = client.get_model_version("base", str(v))
        client.create_model_version(name, source=mv.source, run_id=mv.run_id)
    return name


def cfg_with(setup, **evaluation) -> LifecycleConfig:
    cfg = setup["cfg"]
    return cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update=evaluation)})


def promote(setup, name, version, cfg=None, **kw):
    from loopline.release import promote as core_promote

    return core_promote(
        cfg or setup["cfg"], name, version, lake=setup["lake"], tracking_uri=setup["tracking"], **kw
    )


def aliases(setup, name) -> dict[str, int]:
    return {k: int(v) for k, v in setup["client"].get_registered_model(name).aliases.items()}


def register_edited(setup, name: str, edit, *, base_version: int) -> int:
    """A new version of `name`: the bundle of `base` version `base_version` with `edit(state, meta)` applied
    to its weights and bundle.json, logged by loopline itself, in a run tagged like the base's training run
    (so it is evaluated on the same split)."""
    from loopline.packaging.bundle import load_predictor
    from loopline.packaging.registry import log_and_register_bundle
    from loopline.packaging.safe_load import fetch_bundle
    from loopline.release.testset import read_test_set

    client = setup["client"]
    run = client.get_run(client.get_model_version("base", str(base_version)).run_id)
    tags = {
        k: v for k, v in run.data.tags.items() if k.startswith(("data.", "loopline.dataset", "contract."))
    }
    work = Path(setup["home"]) / f"edit-{name}-{next(_names)}"
    work.mkdir()
    bundle, _ = fetch_bundle(client, "base", base_version, work, tracking_uri=setup["tracking"])
    state = torch.load(bundle / "model.pt", weights_only=True)
    meta = json.loads((bundle / "bundle.json").read_text())
    edit(state, meta)
    torch.save(state, bundle / "model.pt")
    (bundle / "bundle.json").write_text(json.dumps(meta))
    predictor = load_predictor(bundle)
    example = read_test_set(setup["lake"], "demo", 0).frame.head(5)
    mlflow.set_tracking_uri(setup["tracking"])
    with mlflow.start_run(experiment_id=run.info.experiment_id, tags=tags):
        registered = log_and_register_bundle(
            str(bundle),
            model_name=name,
            contract=predictor.contract,
            input_example=example,
            predictions=None,
        )
    return int(registered["model_version"])


def test_first_model_is_promoted_when_it_clears_min_score(setup):
    name = clone(setup, setup["good"])
    result = promote(setup, name, None, cfg=cfg_with(setup, min_score=0.7))
    assert result["promoted"] is True, result["reason"]
    assert (
        result["candidate_version"] == 1
        and result["champion_version"] == 1
        and result["previous_version"] is None
    )
    assert (
        result["reason"].startswith("first model")
        and result["champion_metrics"] is None
        and result["ci"] is None
    )
    assert (
        result["infra_validation"]["ok"] and result["infra_validation"]["rows"] > 64
    )  # real rows + edge rows
    # loaded the way `loopline serve` loads it (the bundle, no pickle), in a process of its own
    assert result["infra_validation"]["loader"] == "loopline.serving.model.load_bundle_model"
    assert result["data"]["candidate_loader"] == "loopline.packaging.pyfunc"
    assert set(result["metrics"]) == {"roc_auc", "accuracy", "log_loss", "f1", "ece"}
    assert result["metrics"]["roc_auc"] > 0.75
    assert aliases(setup, name) == {"champion": 1}
    (entry,) = read_history(setup["client"], name)
    assert entry["action"] == "promote" and entry["champion"] == 1 and entry["stack"] == [1]
    tags = setup["client"].get_model_version(name, "1").tags
    assert "loopline.promoted_at" in tags and json.loads(tags["loopline.last_decision"])["promoted"] is True
    # the model card is an MLflow artifact of the decision run
    card = mlflow.artifacts.load_text(result["model_card_uri"])
    assert "PROMOTED" in card and "## Slices" in card and "features version" in card
    assert "`loopline.serving.model.load_bundle_model` + a `dataframe_split` request" in card


def test_min_score_keeps_a_weak_first_model_out(setup):
    name = clone(setup, setup["crippled"])
    result = promote(setup, name, 1, cfg=cfg_with(setup, min_score=0.7), infra_validate=False)
    assert result["promoted"] is False and result["reason"].startswith("min_score")
    assert result["champion_version"] is None and aliases(setup, name) == {}
    assert read_history(setup["client"], name) == []


def test_a_crippled_model_is_never_promoted_and_the_champion_stays(setup):
    name = clone(setup, setup["good"], setup["crippled"])
    assert promote(setup, name, 1)["promoted"]
    # even a config that allows lateral moves and ignores slices refuses a model this much worse
    for cfg in (setup["cfg"], cfg_with(setup, min_improvement=-0.01, max_slice_regression=None)):
        result = promote(setup, name, 2, cfg=cfg, infra_validate=False)
        assert result["promoted"] is False
        assert result["reason"].startswith("min_improvement"), result["reason"]
        assert result["champion_version"] == 1 and result["compared_with"] == 1
        assert result["ci"]["high"] < 0  # the whole interval says worse
    assert aliases(setup, name) == {"champion": 1}
    assert len(read_history(setup["client"], name)) == 1


def test_a_better_model_is_promoted_over_the_champion(setup):
    name = clone(setup, setup["crippled"], setup["good"])
    assert promote(setup, name, 1)["promoted"]  # first model, no min_score
    result = promote(setup, name, 2, cfg=cfg_with(setup, require_ci=True, min_improvement=0.05))
    assert result["promoted"] is True, result["reason"]
    assert (result["champion_version"], result["previous_version"]) == (2, 1)
    assert result["improvement"] > 0.05 and result["ci"]["low"] > 0.05
    assert result["metrics"]["roc_auc"] > result["champion_metrics"]["roc_auc"]
    assert aliases(setup, name) == {"champion": 2, "previous": 1}
    history = read_history(setup["client"], name)
    assert [e["champion"] for e in history] == [1, 2] and history[-1]["stack"] == [1, 2]
    assert history[-1]["metrics"]["ci"]["low"] == pytest.approx(result["ci"]["low"])


def test_a_tie_keeps_the_champion_unless_a_lateral_move_is_allowed(setup):
    name = clone(setup, setup["good"], setup["good"])  # two versions, the same weights
    promote(setup, name, 1)
    tie = promote(setup, name, 2, infra_validate=False)
    assert tie["promoted"] is False and tie["improvement"] == 0
    assert "tie keeps the champion" in tie["reason"]
    assert tie["ci"]["low"] == tie["ci"]["high"] == 0
    lateral = promote(setup, name, 2, cfg=cfg_with(setup, min_improvement=-0.001), infra_validate=False)
    assert lateral["promoted"] is True and aliases(setup, name) == {"champion": 2, "previous": 1}
    again = promote(setup, name, 2, infra_validate=False)
    assert again["promoted"] is False and again["reason"].startswith("not already champion")


def test_a_slice_regression_blocks_an_otherwise_better_model(setup):
    name = clone(setup, setup["crippled"])
    promote(setup, name, 1)
    v2 = register_edited(setup, name, inverted_on_corp, base_version=setup["good"])
    cfg = cfg_with(setup, min_slice_rows=30)
    blocked = promote(setup, name, v2, cfg=cfg, infra_validate=False)
    assert blocked["improvement"] > 0  # better overall ...
    assert blocked["promoted"] is False  # ... but not on one slice
    assert blocked["reason"].startswith("max_slice_regression") and "segment=corp" in blocked["reason"]
    corp = next(s for s in blocked["slices"] if (s["column"], s["value"]) == ("segment", "corp"))
    assert corp["judged"] and corp["improvement"] < -0.05
    assert aliases(setup, name) == {"champion": 1}
    # the slice check was the only blocker
    assert promote(setup, name, v2, cfg=cfg_with(setup, max_slice_regression=None), infra_validate=False)[
        "promoted"
    ]


def test_a_model_that_predicts_nan_fails_infra_validation(setup):
    name = clone(setup, setup["good"])
    promote(setup, name, 1)
    bad = register_edited(setup, name, nan_weights, base_version=setup["good"])
    result = promote(setup, name, bad)
    assert result["promoted"] is False
    assert result["reason"].startswith("infra validation failed") and "non-finite" in result["reason"], (
        result["reason"]
    )
    assert result["infra_validation"]["ok"] is False and result["metrics"] is None
    assert aliases(setup, name) == {"champion": 1}
    tags = setup["client"].get_model_version(name, str(bad)).tags
    assert "non-finite" in json.loads(tags["loopline.last_decision"])["reason"]


def test_infra_validation_overlaps_the_evaluation_and_its_verdict_still_decides(setup, monkeypatch):
    # the validation runs in its own process: the evaluation goes on meanwhile, the decision waits for both
    import loopline.release.promotion as promotion

    events: dict[str, float] = {}
    real_infra, real_evaluate = promotion.run_infra_validation, promotion.evaluate_versions

    def slow_infra(*args, **kwargs):
        events["infra_started"] = time.monotonic()
        time.sleep(1.0)  # a validation slower than the evaluation
        try:
            return real_infra(*args, **kwargs)
        finally:
            events["infra_ended"] = time.monotonic()

    def evaluate(*args, **kwargs):
        events.setdefault("evaluation_started", time.monotonic())
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(promotion, "run_infra_validation", slow_infra)
    monkeypatch.setattr(promotion, "evaluate_versions", evaluate)
    name = clone(setup, setup["crippled"], setup["good"])
    assert promote(setup, name, 1, infra_validate=False)["promoted"]
    events.clear()
    result = promote(setup, name, 2)
    assert result["promoted"] and result["infra_validation"]["ok"], result["reason"]
    assert events["infra_started"] <= events["evaluation_started"] < events["infra_ended"]
    assert result["timings_s"]["infra_wait_after_evaluate"] > 0  # the decision waited for the verdict
    assert result["checks"][0] == {"name": "infra validation", "passed": True, "detail": "passed"}


def test_one_promotion_reads_each_mlmodel_once_and_the_next_reads_it_again(setup, monkeypatch):
    # the loader gate judges each version once per promotion; infra validation and both scorings load on
    # that verdict. The next promotion judges again: an MLmodel rewritten since is refused, nothing loaded
    from collections import Counter
    from urllib.parse import urlparse

    import yaml

    import loopline.packaging.safe_load as safe_load
    from loopline.release.scoring import clear_caches

    name = clone(setup, setup["crippled"])
    candidate = register_edited(setup, name, lambda state, meta: None, base_version=setup["good"])
    assert promote(setup, name, 1, infra_validate=False)["promoted"]
    reads: Counter = Counter()
    real_download = safe_load._download

    def download(artifact_uri, dst, tracking_uri, model, version):
        if artifact_uri.endswith("/MLmodel"):
            reads[(model, str(version))] += 1
        return real_download(artifact_uri, dst, tracking_uri, model, version)

    monkeypatch.setattr(safe_load, "_download", download)
    clear_caches()  # the champion is loaded again too
    result = promote(setup, name, candidate)
    assert result["promoted"] and result["infra_validation"]["ok"], result["reason"]
    assert reads == {(name, "1"): 1, (name, str(candidate)): 1}

    root = setup["client"].get_model_version_download_uri(name, str(candidate))
    mlmodel = Path(urlparse(root).path) / "MLmodel"
    meta = yaml.safe_load(mlmodel.read_text())
    meta["flavors"]["sklearn"] = {"pickled_model": "model.pkl"}
    mlmodel.write_text(yaml.safe_dump(meta))
    clear_caches()
    again = promote(setup, name, candidate)
    assert not again["promoted"] and "sklearn" in again["reason"], again["reason"]
    assert again["infra_validation"]["refused"] and reads[(name, str(candidate))] == 2


def test_a_prompt_is_never_promoted_nor_written_to(setup):
    # promotion writes aliases and tags without MlflowClient's per-write prompt check
    # (champion.registry_writes): reading the model's state refuses a prompt before any write
    import mlflow.genai

    mlflow.set_registry_uri(setup["tracking"])
    mlflow.genai.register_prompt(name="prompt-not-model", template="hello {{name}}")
    with pytest.raises(ModelError):
        promote(setup, "prompt-not-model", 1)
    prompt = setup["client"]._get_registry_client().get_registered_model("prompt-not-model")
    version = setup["client"]._get_registry_client().get_model_version("prompt-not-model", "1")
    assert not prompt.aliases and not [k for k in {**prompt.tags, **version.tags} if "loopline" in k]


def test_eight_concurrent_promotions_end_with_one_champion_and_a_consistent_history(setup):
    order = [setup["good"]] * 4 + [setup["crippled"]] * 4
    random.Random(7).shuffle(order)
    name = clone(setup, *order)
    good_versions = {i + 1 for i, v in enumerate(order) if v == setup["good"]}
    results: dict[int, dict] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def attempt(version: int) -> None:
        try:
            start.wait()
            results[version] = promote(setup, name, version)
        except BaseException as exc:  # collected: an assertion in a thread would vanish
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(v,)) for v in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert len(results) == 8
    promoted = [v for v, r in results.items() if r["promoted"]]
    history = read_history(setup["client"], name)
    # one record per successful promotion, numbered without gaps or duplicates
    assert [e["seq"] for e in history] == list(range(1, len(promoted) + 1))
    assert sorted(e["champion"] for e in history) == sorted(promoted)
    # every move saw the champion the previous move left behind
    assert [e["from"] for e in history] == [None] + [e["champion"] for e in history[:-1]]
    assert replay(history) == history[-1]["stack"]
    final = aliases(setup, name)
    assert final["champion"] == history[-1]["champion"] and final["champion"] in good_versions
    assert final.get("previous") == (history[-1]["stack"][-2] if len(history) > 1 else None)
    # a crippled version may only have won while nothing (or another crippled one) was champion
    for e in history:
        if e["champion"] not in good_versions:
            assert e["from"] is None or e["from"] not in good_versions


def test_rollback_twice_walks_back_two_champions(setup):
    from loopline.release import rollback

    name = clone(setup, setup["crippled"], setup["good"], setup["good"])
    lateral = cfg_with(setup, min_improvement=-0.001)
    for v in (1, 2, 3):
        assert promote(setup, name, v, cfg=lateral, infra_validate=False)["promoted"]
    assert aliases(setup, name) == {"champion": 3, "previous": 2}

    first = rollback(name, tracking_uri=setup["tracking"], reason="error rate", home=str(setup["home"]))
    assert (first["champion_version"], first["previous_version"], first["rolled_back_version"]) == (2, 1, 3)
    assert aliases(setup, name) == {"champion": 2, "previous": 1}
    second = rollback(name, tracking_uri=setup["tracking"], home=str(setup["home"]))
    assert (second["champion_version"], second["previous_version"]) == (1, None)
    assert aliases(setup, name) == {"champion": 1}
    with pytest.raises(ModelError, match="no previous champion"):
        rollback(name, tracking_uri=setup["tracking"], home=str(setup["home"]))

    history = read_history(setup["client"], name)
    assert [(e["action"], e["champion"]) for e in history] == [
        ("promote", 1),
        ("promote", 2),
        ("promote", 3),
        ("rollback", 2),
        ("rollback", 1),
    ]
    assert replay(history) == [1]
    tags = setup["client"].get_model_version(name, "3").tags
    assert tags["loopline.rolled_back_reason"] == "error rate"
    # promoting again after rollbacks continues the same history
    assert promote(setup, name, 3, cfg=lateral, infra_validate=False)["promoted"]
    assert aliases(setup, name) == {"champion": 3, "previous": 1}


def test_rollback_refuses_a_champion_the_current_contract_broke(setup, tmp_path):
    """The previous champion was trained on contract v1; v2 removed one of its columns (ingested with
    --allow-incompatible): rolling back to it would put a model that refuses today's requests in front of
    them. Refused, the champion left in place, unless forced; a compatible change (a nullable column) is no
    obstacle."""
    import yaml

    from loopline.data.contract_registry import register_contract
    from loopline.data.contracts import parse_contract
    from loopline.release import rollback

    name = clone(setup, setup["good"], setup["good"])
    lateral = cfg_with(setup, min_improvement=-0.001)
    for v in (1, 2):
        assert promote(setup, name, v, cfg=lateral, infra_validate=False)["promoted"]
    lake = Lake(root=str(tmp_path / "lake"))  # this test's own lake: the module's keeps its contract
    trained = load_contract(setup["cfg"].data.contract)
    register_contract(lake, trained)
    doc = yaml.safe_load(Path(setup["cfg"].data.contract).read_text())
    doc["columns"]["extra"] = {"type": "float", "nullable": True}
    register_contract(lake, parse_contract(doc))  # compatible: the rollback may go ahead
    back = rollback(name, tracking_uri=setup["tracking"], home=str(setup["home"]), lake=lake)
    assert back["champion_version"] == 1
    assert promote(setup, name, 2, cfg=lateral, infra_validate=False)["promoted"]
    del doc["columns"]["note"]
    register_contract(lake, parse_contract(doc), allow_incompatible=True)
    with pytest.raises(
        ModelError, match=r"v1: it was trained on contract version 1 .*'note' removed.*--force"
    ):
        rollback(name, tracking_uri=setup["tracking"], home=str(setup["home"]), lake=lake)
    assert aliases(setup, name)["champion"] == 2
    forced = rollback(name, tracking_uri=setup["tracking"], home=str(setup["home"]), lake=lake, force=True)
    assert forced["champion_version"] == 1 and aliases(setup, name)["champion"] == 1


def test_a_hand_moved_alias_is_recorded_before_the_next_move(setup):
    name = clone(setup, setup["crippled"], setup["good"])
    promote(setup, name, 1)
    setup["client"].set_registered_model_alias(name, "champion", "2")  # someone moved it by hand
    from loopline.release import rollback

    back = rollback(name, tracking_uri=setup["tracking"], home=str(setup["home"]))
    assert back["champion_version"] == 1
    actions = [(e["action"], e["champion"]) for e in read_history(setup["client"], name)]
    assert actions == [("promote", 1), ("reconcile", 2), ("rollback", 1)]


def test_evaluate_reports_without_moving_anything(setup):
    from loopline.release import evaluate

    name = clone(setup, setup["good"], setup["crippled"])
    promote(setup, name, 1, infra_validate=False)
    result = evaluate(setup["cfg"], name, 2, lake=setup["lake"], tracking_uri=setup["tracking"])
    assert result["candidate_version"] == 2 and result["champion_version"] == 1
    assert result["metrics"]["roc_auc"] < result["champion_metrics"]["roc_auc"]
    assert result["ci"]["method"] == "bootstrap" and result["ci"]["samples"] == 200
    assert {s["column"] for s in result["slices"]} == {"segment", "region", "channel"}
    assert result["data"]["features_version"] == 0 and result["rows"] > 400
    assert "promoted" not in result and aliases(setup, name) == {"champion": 1}
    assert "Model card" in mlflow.artifacts.load_text(result["model_card_uri"])
    with pytest.raises(ModelError):
        evaluate(setup["cfg"], name, 99, lake=setup["lake"], tracking_uri=setup["tracking"])


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_multiclass_and_regression_models_are_evaluated_with_their_metrics(setup, task):
    from loopline.train import run_training
    from loopline.train.sample_data import build_sample_features, tiny_contract, tiny_frame

    contract = tiny_contract(task)
    build_sample_features(setup["lake"], contract, tiny_frame(contract, 3000))
    cfg = setup["cfg"].model_copy(deep=True)
    cfg.training.max_steps, cfg.training.hidden_sizes, cfg.training.batch_size = 60, [16], 128
    name = f"tiny-{task}"
    run_training(cfg, contract.dataset, lake=setup["lake"], tracking_uri=setup["tracking"], model_name=name)
    cfg.training.lr, cfg.training.max_steps = 0.0, 1
    run_training(cfg, contract.dataset, lake=setup["lake"], tracking_uri=setup["tracking"], model_name=name)
    ceiling = {"regression": {"min_score": 100.0}, "multiclass": {"min_score": 0.5}}[task]
    first = promote(setup, name, 1, cfg=cfg_with(setup, **ceiling), infra_validate=False)
    assert first["promoted"], first["reason"]
    primary = {"multiclass": "accuracy", "regression": "rmse"}[task]
    assert first["primary_metric"] == primary
    expected = {"multiclass": {"accuracy", "macro_f1", "log_loss"}, "regression": {"rmse", "mae", "r2"}}[task]
    assert set(first["metrics"]) == expected
    second = promote(setup, name, 2, infra_validate=False)
    assert second["promoted"] is False and second["improvement"] < 0
    if task == "regression":  # lower is better: the interval is reported on candidate - champion
        assert second["ci"]["higher_is_better"] is False and second["ci"]["low"] > 0
    slices = {s["value"] for s in second["slices"] if s["column"] == "kind"}
    assert slices == {"a", "b", "c"}


def _api_post(path: str, body: dict):
    """Raw HTTP to the real Prefect API (the 3.8.8 client sends `limit: null`, which this server refuses)."""
    import os

    import httpx

    response = httpx.post(os.environ["PREFECT_API_URL"] + path, json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def test_promotion_flows_serialise_report_and_emit_events(setup, prefect_api):
    import time

    from prefect import get_client

    from flows.promotion import evaluation_flow, promotion_flow, rollback_flow
    from tasks.promotion import limit_name, slug

    name = clone(setup, setup["crippled"], setup["good"], setup["good"])
    cfg = setup["cfg"]
    # three promotions at once through the task layer: the global concurrency limit takes them one by one
    results: dict[int, dict] = {}
    threads = [
        threading.Thread(
            target=lambda v=v: results.__setitem__(v, promotion_flow(cfg, model=name, version=v))
        )
        for v in (1, 2, 3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert len(results) == 3
    history = read_history(setup["client"], name)
    assert [e["seq"] for e in history] == list(range(1, sum(r["promoted"] for r in results.values()) + 1))
    assert aliases(setup, name)["champion"] in (2, 3) and replay(history) == history[-1]["stack"]
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(limit_name(name)).limit == 1

    # make sure there is something to roll back: a lateral move to the good version that is not champion
    other = 5 - aliases(setup, name)["champion"]
    assert promotion_flow(cfg_with(setup, min_improvement=-0.001), model=name, version=other)["promoted"]
    evaluated = evaluation_flow(cfg, model=name, version=1)
    assert evaluated["champion_version"] == other and evaluated["improvement"] < 0
    while len(read_history(setup["client"], name)[-1]["stack"]) > 1:
        back = rollback_flow(name, cfg, reason="test")
        assert back["reason"] == "test"
    assert aliases(setup, name)["champion"] == read_history(setup["client"], name)[-1]["stack"][0]

    keys = [f"model-card-{slug(name)}", f"evaluation-{slug(name)}", f"rollback-{slug(name)}"]
    arts = _api_post("/artifacts/filter", {"artifacts": {"key": {"any_": keys}}, "limit": 20})
    assert {a["key"] for a in arts} == set(keys) and all(a["type"] == "markdown" for a in arts)
    assert any("# Model card" in a["data"] for a in arts if a["key"] == keys[0])

    body = {
        "filter": {"event": {"prefix": ["loopline.model."]}, "resource": {"id": [f"loopline.model.{name}"]}},
        "limit": 50,
    }
    promoted = sum(r["promoted"] for r in results.values()) + 1
    rolled_back = len([e for e in read_history(setup["client"], name) if e["action"] == "rollback"])
    deadline, names = time.time() + 30, []
    while time.time() < deadline:
        names = [e["event"] for e in _api_post("/events/filter", body)["events"]]
        if (
            names.count("loopline.model.promoted") >= promoted
            and names.count("loopline.model.rolled_back") >= rolled_back
        ):
            break
        time.sleep(1)
    assert names.count("loopline.model.promoted") == promoted
    assert names.count("loopline.model.rolled_back") == rolled_back >= 1


def test_the_bootstrap_runs_beside_the_slices_with_the_same_interval_and_its_errors_reach_the_caller(
    setup, monkeypatch
):
    # evaluate_versions computes the CI in a thread of its own while it computes the metrics and slices
    import loopline.release.scoring as scoring
    from loopline.release.metrics import bootstrap_difference

    name = clone(setup, setup["crippled"], setup["good"])
    threads: list[str] = []

    def bootstrap(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return bootstrap_difference(*args, **kwargs)

    monkeypatch.setattr(scoring, "bootstrap_difference", bootstrap)
    kw = {"lake": setup["lake"], "tracking_uri": setup["tracking"], "champion_version": 1}
    result = scoring.evaluate_versions(setup["cfg"], name, 2, **kw)
    assert threads and threads[0] != threading.current_thread().name
    test = scoring.read_test_set(setup["lake"], result["dataset"], result["data"]["features_version"])
    outputs = [scoring.score_version(name, v, test, tracking_uri=setup["tracking"]) for v in (2, 1)]
    ev = setup["cfg"].evaluation
    same = bootstrap_difference(
        "roc_auc", "binary", test.y, *outputs, samples=ev.bootstrap_samples, seed=ev.seed
    )
    assert result["ci"] == same

    def failing(*args, **kwargs):
        raise RuntimeError("bootstrap failed")

    monkeypatch.setattr(scoring, "bootstrap_difference", failing)
    with pytest.raises(RuntimeError, match="bootstrap failed"):
        scoring.evaluate_versions(setup["cfg"], name, 2, **kw)
