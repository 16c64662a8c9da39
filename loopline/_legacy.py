"""Import aliases for the module paths loopline had before it was grouped by lifecycle stage.

Models registered before the regroup still name those paths: the MLflow pyfunc pickle refers to
`loopline.pyfunc.LooplineModel`, and `bundle.json` names factories such as `loopline.models:mlp`.
`import loopline.pyfunc` returns the very module object `loopline.packaging.pyfunc` (same classes, so
unpickling and isinstance keep working). New code uses the new paths; nothing here is imported eagerly.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

OLD_TO_NEW = {
    "loopline.lake": "loopline.storage.lake",
    "loopline.delta": "loopline.storage.delta",
    "loopline.sources": "loopline.storage.sources",
    "loopline.contracts": "loopline.data.contracts",
    "loopline.synthetic": "loopline.data.synthetic",
    "loopline.ingest": "loopline.data.ingest",
    "loopline.validate": "loopline.data.validation.gate",
    "loopline.gx_suite": "loopline.data.validation.suite",
    "loopline.validation_gx": "loopline.data.validation.gx",
    "loopline.validation_coerce": "loopline.data.validation.coerce",
    "loopline.validation_ids": "loopline.data.validation.ids",
    "loopline.bundle": "loopline.packaging.bundle",
    "loopline.pyfunc": "loopline.packaging.pyfunc",
    "loopline.registry": "loopline.packaging.registry",
    "loopline.model_card": "loopline.packaging.model_card",
    "loopline.models": "loopline.train.models",
    "loopline.gpu": "loopline.train.gpu",
    "loopline.drift": "loopline.monitoring",
    "loopline.drift.binning": "loopline.monitoring.binning",
    "loopline.drift.detect": "loopline.monitoring.detect",
    "loopline.drift.methods": "loopline.monitoring.methods",
    "loopline.drift.performance": "loopline.monitoring.performance",
    "loopline.drift.profile": "loopline.monitoring.profile",
    "loopline.drift.render": "loopline.monitoring.render",
    "loopline.verdicts": "loopline.monitoring.verdicts",
    "loopline.retrain": "loopline.monitoring.retrain",
    "loopline.status": "loopline.monitoring.status",
    "loopline.evaluate": "loopline.release.scoring",
    "loopline.eval_metrics": "loopline.release.metrics",
    "loopline.infra_validation": "loopline.release.infra_validation",
    "loopline.promote": "loopline.release.promotion",
    "loopline.champion": "loopline.release.champion",
    "loopline.deploy": "loopline.release.deploy",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):  # a placeholder; exec_module swaps the real module in
        return None

    def exec_module(self, module) -> None:
        # the import system returns whatever sys.modules holds under the name after exec_module
        sys.modules[module.__name__] = importlib.import_module(self.target)


class LegacyFinder(importlib.abc.MetaPathFinder):
    """Answers only for the old names (none of which is a module any more)."""

    def find_spec(self, fullname, path=None, target=None):
        new = OLD_TO_NEW.get(fullname)
        if new is None or new == fullname:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new), is_package=fullname == "loopline.drift")


def install() -> None:
    """Idempotent. First in line: a stale folder left by an in-place upgrade (loopline/drift/ holding only
    __pycache__) would otherwise import as an empty namespace package."""
    if not any(isinstance(f, LegacyFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, LegacyFinder())
