"""The `canary-analysis` flow: a version that passed the offline gate goes live as @challenger, step by step.

    start (@challenger, first weight) -> for each step: measure every analysis_interval_seconds until the
    step holds no more -> ramp to the next step | abort (challenger withdrawn, champion keeps 100%) |
    complete (at 100% or after a shadow run: @champion moves, @challenger cleared)

The promotion flow runs it when rollout.mode is canary or shadow; the `canary-analysis` deployment runs it
for a version by hand or from an automation. How long it takes at the defaults: 4 steps of at least
min_step_seconds (600 s) and min_step_requests (500) challenger requests each, so 40 minutes when traffic
is high enough (at the 5% step, 500 requests need 10,000 in all: >= 17 requests/s to fit in 10 minutes).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prefect import flow

import flows.heartbeats  # noqa: F401  (flow runs end without waiting on their heartbeat thread)
from loopline.config import LifecycleConfig, resolve_config


@flow(name="canary-analysis", log_prints=True)
def canary_analysis_flow(
    model: str, version: int, config: LifecycleConfig | None = None, mode: str = ""
) -> dict:
    """Roll `version` of `model` out as @challenger and judge it on live traffic against @champion.

    Args:
        model: Registered model name.
        version: The version to roll out (it passed the offline gate).
        config: Settings; `rollout` holds the steps, minimum time and requests per step, and the bars.
        mode: canary or shadow. Empty: rollout.mode (canary when that is direct).
    """
    from loopline.release.rollout import ABORT, COMPLETE, HOLD
    from tasks.canary import (
        abort_canary,
        complete_canary,
        measure_step,
        ramp_canary,
        scrape_fleet,
        serving_urls,
        start_canary,
    )

    cfg = resolve_config(config)
    mode = mode or (cfg.rollout.mode if cfg.rollout.mode != "direct" else "canary")
    urls = serving_urls(cfg, model)
    # Start: the champion keeps everything but the first step's share
    started = start_canary(cfg, model, int(version), mode)
    champion = started["champion"]
    rollout_baseline, rollout_since = scrape_fleet(urls), datetime.now(UTC)
    steps, measurements = started["steps"], []
    for step in range(len(steps)):
        if step > 0:  # Ramp: the next share, to every replica through the registry
            ramp_canary(cfg, model, int(version), mode, step, measurements[-1])
        step_baseline, step_since, step_started = scrape_fleet(urls), datetime.now(UTC), time.time()
        while True:  # Analyse: hold until the step has the time and the requests for a verdict
            time.sleep(cfg.rollout.analysis_interval_seconds)
            verdict = measure_step(
                cfg,
                model,
                champion=champion,
                version=int(version),
                mode=mode,
                step=step,
                urls=urls,
                rollout_baseline=rollout_baseline,
                step_baseline=step_baseline,
                rollout_since=rollout_since,
                step_since=step_since,
                step_started=step_started,
            )
            if verdict["action"] != HOLD:
                break
        measurements.append(verdict)
        if verdict["action"] == ABORT:
            outcome = abort_canary(cfg, model, int(version), champion, urls, verdict)
            return {**outcome, "steps": measurements}
        if verdict["action"] == COMPLETE:
            outcome = complete_canary(cfg, model, int(version), champion, urls, verdict)
            return {**outcome, "steps": measurements}
    raise AssertionError("the last step completes or aborts")  # decide() never ramps past it
