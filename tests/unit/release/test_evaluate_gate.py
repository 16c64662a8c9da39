"""The promotion gate's decisions, the history replay, the per-model lock and the model card (pure logic)."""

from __future__ import annotations

import threading
import time

import pytest

from loopline.config import EvaluationConfig
from loopline.errors import LooplineError
from loopline.packaging.model_card import render_model_card
from loopline.release.champion import promotion_lock, replay
from loopline.release.gate import decide


def evaluation(cand=0.80, champ=0.75, *, primary="roc_auc", champion_version=1, ci=(0.02, 0.08), slices=None):
    higher = primary not in ("rmse", "mae", "log_loss", "ece")
    delta = cand - champ if champ is not None else None
    return {
        "primary_metric": primary,
        "candidate_version": 2,
        "champion_version": champion_version,
        "metrics": {primary: cand},
        "champion_metrics": {primary: champ} if champ is not None else None,
        "improvement": (delta if higher else -delta) if delta is not None else None,
        "ci": None
        if champ is None
        else {"higher_is_better": higher, "low": ci[0], "high": ci[1], "level": 0.95, "estimate": delta},
        "slices": slices or [],
    }


def slice_(value, improvement, rows=500, judged=True):
    return {
        "column": "segment",
        "value": value,
        "rows": rows,
        "judged": judged,
        "improvement": improvement,
        "metrics": {},
    }


def test_a_better_candidate_passes_every_check():
    d = decide(EvaluationConfig(), evaluation())
    assert d.promote and "improvement 0.0500" in d.reason
    assert {c["name"]: c["passed"] for c in d.checks} == {
        "not already champion": True,
        "min_score": None,
        "min_improvement": True,
        "require_ci": None,
        "max_slice_regression": None,
    }


def test_first_model_needs_only_min_score():
    assert decide(EvaluationConfig(), evaluation(0.51, None, champion_version=None)).promote
    d = decide(EvaluationConfig(min_score=0.6), evaluation(0.51, None, champion_version=None))
    assert not d.promote and d.reason.startswith("min_score")
    d = decide(EvaluationConfig(min_score=0.5), evaluation(0.51, None, champion_version=None))
    assert d.promote and d.reason.startswith("first model") and "clears min_score 0.5" in d.reason


def test_min_score_is_a_ceiling_for_error_metrics():
    ok = evaluation(0.9, None, primary="rmse", champion_version=None)
    assert decide(EvaluationConfig(min_score=1.0), ok).promote
    assert not decide(EvaluationConfig(min_score=0.5), ok).promote


def test_a_tie_keeps_the_champion_unless_lateral_moves_are_allowed():
    tie = evaluation(0.8, 0.8, ci=(0.0, 0.0))
    d = decide(EvaluationConfig(), tie)
    assert not d.promote and "a tie keeps the champion" in d.reason
    assert decide(EvaluationConfig(min_improvement=-0.01), tie).promote
    slightly_worse = evaluation(0.795, 0.8, ci=(-0.01, 0.0))
    assert decide(EvaluationConfig(min_improvement=-0.01), slightly_worse).promote
    assert not decide(EvaluationConfig(min_improvement=-0.001), slightly_worse).promote


def test_min_improvement_is_in_the_direction_of_the_metric():
    better_rmse = evaluation(0.9, 1.0, primary="rmse", ci=(-0.15, -0.05))  # lower error: improvement +0.1
    assert decide(EvaluationConfig(min_improvement=0.05), better_rmse).promote
    assert not decide(EvaluationConfig(min_improvement=0.2), better_rmse).promote
    # the CI of candidate - champion [-0.15, -0.05] is an improvement interval of [0.05, 0.15]
    assert decide(EvaluationConfig(require_ci=True, min_improvement=0.04), better_rmse).promote
    assert not decide(EvaluationConfig(require_ci=True, min_improvement=0.06), better_rmse).promote


def test_require_ci_blocks_an_improvement_that_is_not_significant():
    noisy = evaluation(0.80, 0.79, ci=(-0.01, 0.03))
    assert decide(EvaluationConfig(), noisy).promote
    d = decide(EvaluationConfig(require_ci=True), noisy)
    assert not d.promote and d.reason.startswith("require_ci") and "[-0.0100, 0.0300]" in d.reason


def test_slice_regression_blocks_only_on_judged_slices():
    slices = [slice_("retail", 0.06), slice_("sme", 0.04), slice_("corp", -0.2, rows=20, judged=False)]
    assert decide(EvaluationConfig(), evaluation(slices=slices)).promote
    slices.append(slice_("corp2", -0.08))
    d = decide(EvaluationConfig(), evaluation(slices=slices))
    assert not d.promote and d.reason.startswith("max_slice_regression") and "segment=corp2" in d.reason
    assert decide(EvaluationConfig(max_slice_regression=0.1), evaluation(slices=slices)).promote
    assert decide(EvaluationConfig(max_slice_regression=None), evaluation(slices=slices)).promote


def test_the_champion_itself_is_not_promoted_again():
    d = decide(EvaluationConfig(), {**evaluation(champ=None), "champion_version": 2})
    assert not d.promote and d.reason.startswith("not already champion")


def test_an_undefined_metric_never_promotes():
    assert not decide(EvaluationConfig(), evaluation(float("nan"), 0.7, ci=(float("nan"),) * 2)).promote
    assert not decide(
        EvaluationConfig(min_score=0.5), evaluation(float("nan"), None, champion_version=None)
    ).promote


def test_replay_pushes_promotions_and_pops_rollbacks():
    history = [
        {"action": "promote", "champion": 1},
        {"action": "promote", "champion": 2},
        {"action": "promote", "champion": 3},
        {"action": "rollback", "champion": 2},
        {"action": "promote", "champion": 1},  # an old champion comes back: it moves to the top
        {"action": "reconcile", "champion": 4},
    ]
    assert replay(history[:3]) == [1, 2, 3]
    assert replay(history[:4]) == [1, 2]
    assert replay(history) == [2, 1, 4]


def test_the_promotion_lock_excludes_threads_and_times_out(tmp_path):
    inside, overlaps = [], []

    def hold():
        with promotion_lock(str(tmp_path), "m"):
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(1)
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=hold) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []
    with promotion_lock(str(tmp_path), "m"):
        with pytest.raises(LooplineError, match="another promotion"):
            with promotion_lock(str(tmp_path), "m", timeout_s=0.2):
                pass
        with promotion_lock(str(tmp_path), "other-model", timeout_s=0.2):  # per model
            pass


def test_the_model_card_shows_decision_data_metrics_gate_and_slices():
    ev = evaluation(slices=[slice_("retail", 0.05)])
    d = decide(EvaluationConfig(), ev)
    result = {
        **ev,
        "model": "churn",
        "promoted": d.promote,
        "reason": d.reason,
        "checks": d.checks,
        "champion_version": 2,
        "previous_version": 1,
        "compared_with": 1,
        "dataset": "demo",
        "rows": 1000,
        "data": {"features_version": 3, "clean_version": 2, "transform_version": "abc", "contract_hash": "h"},
        "ci": {**ev["ci"], "metric": "roc_auc", "samples": 1000, "method": "bootstrap", "rows": 1000},
        "infra_validation": {"ok": True, "rows": 70, "seconds": 4.2, "load_s": 3.1, "predict_s": 0.01},
    }
    result["slices"][0]["metrics"] = {"roc_auc": 0.81}
    result["slices"][0]["champion_metrics"] = {"roc_auc": 0.76}
    card = render_model_card(result)
    assert card.startswith("# Model card: `churn` version 2")
    assert "**Decision: PROMOTED to @champion.**" in card
    assert "| demo | 3 | 2 | `abc` | `h` | 1000 |" in card
    assert "| roc_auc (primary) | 0.8000 | 0.7500 | +0.0500 |" in card
    assert "[+0.0200, +0.0800]" in card
    assert "| segment | retail | 500 | 0.8100 | 0.7600 | +0.0500 | yes |" in card
    assert "## Infra validation" in card and "70 contract rows: passed" in card


def test_the_promotion_lock_excludes_processes(tmp_path):
    import subprocess
    import sys

    # each process appends "enter"/"leave" under the lock: with exclusion the log strictly alternates
    log = tmp_path / "log.txt"
    code = (
        "import sys, time\n"
        "from loopline.champion import promotion_lock\n"
        "for _ in range(5):\n"
        "    with promotion_lock(sys.argv[1], 'm'):\n"
        "        open(sys.argv[2], 'a').write('enter\\n'); time.sleep(0.01); open(sys.argv[2], 'a').write('leave\\n')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(log)]) for _ in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    lines = log.read_text().split()
    assert lines == ["enter", "leave"] * 20
