"""Release: a candidate version against the champion (`scoring`, `testset`, `metrics`), infra validation
in a clean process, the promotion gate (`gate`), promotion and its record (`promotion`, `decisions`), the
champion/previous aliases (`champion`), rollback (`rollbacks`), and rolling the champion out to running
model servers (`deploy`). The top stage: it may import every other.

No submodule is named after an exported function, so `from loopline.release import promote` is always
the function (a submodule, once imported, would shadow the lazy export of the same name)."""

from loopline._exports import lazy_exports

_EXPORTS = {
    "evaluate_versions": "scoring",
    "compute_metrics": "metrics",
    "validate_infra": "infra_validation",
    "decide": "gate",
    "evaluate": "promotion",
    "promote": "promotion",
    "rollback": "rollbacks",
    "promotion_history": "champion",
    "move_champion": "champion",
    "start_server": "deploy",
    "stop_all_servers": "deploy",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
