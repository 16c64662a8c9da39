"""Release: a candidate version against the champion (`evaluate`, `metrics`), infra validation in a
clean process, the promotion gate and the champion/previous aliases (`promote`, `champion`), rollback,
and rolling the champion out to running model servers (`deploy`). Imports every stage below serving."""

from loopline._exports import lazy_exports

_EXPORTS = {
    "evaluate_versions": "evaluate",
    "model_name_for": "evaluate",
    "compute_metrics": "metrics",
    "validate_infra": "infra_validation",
    "decide": "promote",
    "rollback": "promote",
    "promotion_history": "promote",
    "move_champion": "champion",
    "start_server": "deploy",
    "stop_all_servers": "deploy",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
