"""The promotion gate: a candidate's evaluation in, a decision with a reason and every check out. Pure: no
registry, no alias (loopline.release.promotion calls it under the model's lock).

The gate, in order: not already champion; min_score (absolute bar); then, when a champion exists:
improvement >= min_improvement (and > 0 unless min_improvement < 0: a tie keeps the champion), with
require_ci the bootstrap interval's lower bound must clear the same bar, and no judged slice may lose more
than max_slice_regression. The first model is promoted when it clears min_score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from loopline.config import EvaluationConfig
from loopline.release.metrics import HIGHER_IS_BETTER, clears_floor, improvement_bounds


@dataclass
class Decision:
    promote: bool
    reason: str
    checks: list[dict[str, Any]] = field(default_factory=list)


def check(name: str, passed: bool | None, detail: str) -> dict[str, Any]:
    """One line of the gate's report: passed True/False, or None when the check does not apply."""
    return {"name": name, "passed": None if passed is None else bool(passed), "detail": detail}


def _n(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _clears(value: float, bar: float) -> bool:
    """The improvement rule: at least `bar`, and strictly positive unless a lateral move is allowed (bar < 0)."""
    return value >= bar and (value > 0 or bar < 0)


def decide(ecfg: EvaluationConfig, evaluation: dict[str, Any]) -> Decision:
    """The gate. Every check is reported (passed True/False, or None when it does not apply)."""
    primary = evaluation["primary_metric"]
    value = evaluation["metrics"][primary]
    better = ">=" if HIGHER_IS_BETTER[primary] else "<="
    cand, champ = evaluation["candidate_version"], evaluation["champion_version"]
    champ_metrics = evaluation.get("champion_metrics")
    checks = []

    already = champ is not None and champ == cand
    checks.append(
        check("not already champion", not already, f"@champion is v{champ}" if champ else "no champion yet")
    )
    if ecfg.min_score is None:
        checks.append(check("min_score", None, "not set"))
    else:
        ok = clears_floor(primary, value, ecfg.min_score)
        checks.append(check("min_score", ok, f"{primary} {_n(value)} {better} {ecfg.min_score} required"))

    if champ_metrics is None or already:
        why = (
            "nothing to compare with"
            if champ is None
            else (evaluation.get("champion_error") or "same version")
        )
        for name in ("min_improvement", "require_ci", "max_slice_regression"):
            checks.append(check(name, None, why))
    else:
        gain, bar = evaluation["improvement"], ecfg.min_improvement
        verdict = f"{primary} {_n(value)} vs champion {_n(champ_metrics[primary])}: improvement {_n(gain)}"
        if gain == 0 and bar >= 0:
            verdict += " (a tie keeps the champion; a negative min_improvement allows a lateral move)"
        checks.append(check("min_improvement", _clears(gain, bar), f"{verdict}, min_improvement {bar}"))
        ci = evaluation.get("ci")
        if ci is not None:
            low, high = improvement_bounds(ci)
            detail = f"{int(ci['level'] * 100)}% CI of the improvement [{_n(low)}, {_n(high)}]"
            checks.append(
                check(
                    "require_ci",
                    _clears(low, bar) if ecfg.require_ci else None,
                    detail + ("" if ecfg.require_ci else " (not required)"),
                )
            )
        else:
            checks.append(check("require_ci", None, "no interval"))
        checks.append(_slice_check(ecfg, evaluation))

    failed = [c for c in checks if c["passed"] is False]
    if failed:
        return Decision(False, f"{failed[0]['name']}: {failed[0]['detail']}", checks)
    if champ is None:
        reason = f"first model: no champion yet; {primary} {_n(value)}"
        if ecfg.min_score is not None:
            reason += f" clears min_score {ecfg.min_score}"
        return Decision(True, reason, checks)
    if champ_metrics is None:
        return Decision(
            True,
            f"the champion v{champ} cannot score the current data ({evaluation.get('champion_error')}); {primary} {_n(value)}",
            checks,
        )
    ci = evaluation.get("ci") or {}
    interval = f", CI [{_n(improvement_bounds(ci)[0])}, {_n(improvement_bounds(ci)[1])}]" if ci else ""
    return Decision(
        True,
        f"{primary} {_n(value)} vs champion v{champ} {_n(champ_metrics[primary])} "
        f"(improvement {_n(evaluation['improvement'])}{interval})",
        checks,
    )


def _slice_check(ecfg: EvaluationConfig, evaluation: dict[str, Any]) -> dict[str, Any]:
    judged = [s for s in evaluation.get("slices") or [] if s["judged"] and s.get("improvement") is not None]
    if ecfg.max_slice_regression is None:
        return check("max_slice_regression", None, "not set")
    if not judged:
        return check("max_slice_regression", None, f"no slice has {ecfg.min_slice_rows}+ rows")
    worst = min(judged, key=lambda s: s["improvement"])
    detail = (
        f"worst slice {worst['column']}={worst['value']} ({worst['rows']} rows): {evaluation['primary_metric']} "
        f"improvement {_n(worst['improvement'])}, allowed drop {ecfg.max_slice_regression}"
    )
    return check("max_slice_regression", worst["improvement"] >= -ecfg.max_slice_regression, detail)
