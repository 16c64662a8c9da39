"""Features: clean/D -> features/D through a declarative, fitted, versioned transform (`transform`),
built incrementally per clean batch (`table`), read back with Delta time travel (`store`).
Imports storage and data."""

from loopline._exports import lazy_exports

_EXPORTS = {
    "SPLITS": "transform",
    "FeatureTransform": "transform",
    "assign_split": "transform",
    "fit_transform": "transform",
    "load_transform": "transform",
    "save_transform": "transform",
    "build_features": "table",
    "contract_columns": "table",
    "features_schema": "table",
    "refit_reason": "table",
    "FeatureSplit": "store",
    "encode_labels": "store",
    "get_features": "store",
    "read_split": "store",
    "read_split_frame": "store",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
