"""loopline's core, one package per lifecycle stage, in import order: a stage imports only the stages
before it (tests/unit/test_layers.py holds this), and none of them imports prefect.

    storage     the lake (local or S3), Delta helpers, sources, atomic writes
    data        contracts, ingest, the synthetic source, validation/ (the gate)
    features    the fitted transform, the features table, the feature-store read API
    packaging   the model bundle, factories by name, the MLflow pyfunc and registry, model cards
    serving     the model server (MLflow scoring protocol), batching, routing, inference log
    monitoring  drift (and the reference profile training stores), verdicts, retrain gates, status
    train       the loop, checkpoints, preemption, DDP, built-in models, GPU telemetry
    release     evaluation, metrics, infra validation, the promotion gate, champion aliases, deploy

Serving sits low (it needs only bundles), so it can never reach into training; training sits above
monitoring because it stores the drift reference profile. `config.py` (one typed config per stage) and
`errors.py` (typed user errors) and `faults.py` (the reliability suite's kill points) sit below them all.
Each stage has a task module in tasks/ and a flow in flows/; README.md maps them.
"""

from loopline import _legacy

_legacy.install()  # models registered before the regroup name the old module paths
