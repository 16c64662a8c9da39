"""Bundle factories for the infra-validation isolation tests: each builds the built-in MLP (so the bundle's
weights load), after doing something a validation must survive or must not pass on to the next one.
The tests name these in a bundle's `factory` and trust this module through LOOPLINE_MODEL_MODULES."""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time

from loopline.train.models import mlp


def crash(input_dim, output_dim, cfg):
    os.kill(os.getpid(), signal.SIGSEGV)  # what a broken native extension does to its process


def hang(input_dim, output_dim, cfg):
    time.sleep(3600)


def leaky(input_dim, output_dim, cfg):
    """A valid model whose loading leaves traces in the process: a patched numpy, the environment."""
    import numpy

    numpy.LOOPLINE_LEAK = True
    os.environ["LOOPLINE_LEAK"] = "1"
    return mlp(input_dim, output_dim, cfg)


def observer(input_dim, output_dim, cfg):
    """A valid model that writes what it finds in its process to $LOOPLINE_OBSERVE."""
    import numpy

    report = {
        "pid": os.getpid(),
        "numpy_leak": hasattr(numpy, "LOOPLINE_LEAK"),
        "env_leak": "LOOPLINE_LEAK" in os.environ,
        "mlflow_imported": "mlflow" in sys.modules,
        "seen": os.environ.get("LOOPLINE_OBSERVE_TOKEN"),
        "frozen_objects": gc.get_freeze_count(),
        "niceness": os.nice(0),
    }
    with open(os.environ["LOOPLINE_OBSERVE"], "w") as fh:
        json.dump(report, fh)
    return mlp(input_dim, output_dim, cfg)
