"""Packaging: a trained model as a bundle (weights, factory name, fitted transform, contract) that
scores raw contract rows, its MLflow pyfunc face and registry helpers, and the model card.
Imports storage, data and features; the factory a bundle names is imported only when it loads."""

from loopline._exports import lazy_exports

_EXPORTS = {
    "BundleMeta": "bundle",
    "Predictor": "bundle",
    "load_predictor": "bundle",
    "read_bundle_meta": "bundle",
    "write_bundle": "bundle",
    "resolve_factory": "factory",
    "LooplineModel": "pyfunc",
    "default_tracking_uri": "registry",
    "tracking_uri_for": "registry",
    "model_name_for": "registry",
    "log_and_register_bundle": "registry",
    "render_model_card": "model_card",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
