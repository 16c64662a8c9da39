"""The canary's prediction-shift check judges only samples large enough for its bins: two samples of one
distribution must not abort a rollout at the default bar."""

from __future__ import annotations

import numpy as np

from loopline.config import RolloutConfig
from loopline.release.canary_analysis import MIN_SHIFT_ROWS, _shift_check


def test_samples_of_one_distribution_pass_the_default_bar_at_the_fewest_rows_judged():
    rcfg, rng = RolloutConfig(), np.random.default_rng(0)
    verdicts = [
        _shift_check(rcfg, rng.random(1000), rng.random(MIN_SHIFT_ROWS))["passed"] for _ in range(300)
    ]
    assert verdicts.count(False) <= 3  # at most 1% false aborts (50 rows: 35%)


def test_fewer_rows_leave_the_shift_undecided_and_a_real_shift_fails():
    rcfg, rng = RolloutConfig(), np.random.default_rng(1)
    ref = rng.random(1000)
    few = _shift_check(rcfg, ref, rng.random(MIN_SHIFT_ROWS - 1))
    assert few["passed"] is None and f"{MIN_SHIFT_ROWS} needed" in few["detail"]
    assert _shift_check(rcfg, ref, rng.random(MIN_SHIFT_ROWS) ** 3)["passed"] is False
