"""One pydantic model per stage, composed into `LifecycleConfig`.

The same model is (a) the lifecycle flow's parameters (the Prefect UI renders it as a form), (b) the
YAML file behind `--config FILE`, (c) overridable per key with `--set section.key=value`, and (d) logged
whole to MLflow. Every default lives here, in one visible place, and says why where it is not obvious.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from loopline.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def default_home() -> str:
    """`LOOPLINE_HOME` holds the embedded defaults (lake, mlflow.db, artifacts, checkpoints)."""
    return os.environ.get("LOOPLINE_HOME", "./.loopline")


class SyntheticConfig(_Section):
    """The seeded demo source (contracts/demo.yaml). Used when `data.source` is empty."""

    rows: int = Field(20_000, ge=1, description="rows to generate")
    seed: int | None = Field(
        None,
        description="RNG seed (the same seed gives the same rows); empty: one per batch, a fresh batch each run",
    )
    id_offset: int | None = Field(
        None, ge=0, description="first customer id; empty: the next id after those the lake holds"
    )
    drift_columns: list[str] = Field(
        default_factory=list, description="columns to shift (numeric or category)"
    )
    drift_mean_shift: float = Field(
        0.0, description="added to drifted numeric columns, in standard deviations"
    )
    drift_scale: float = Field(1.0, gt=0, description="multiplies the spread of drifted numeric columns")
    drift_category_mix: float = Field(
        0.0, ge=0, le=1, description="share of drifted category values redrawn towards the last category"
    )
    bad_fraction: float = Field(
        0.0, ge=0, le=1, description="share of rows given a contract violation (every kind)"
    )
    format: Literal["csv", "parquet", "jsonl"] = Field(
        "parquet", description="file format written for ingest"
    )


class DataConfig(_Section):
    dataset: str | None = Field(
        None, description="dataset to work on; its contract comes from the lake (stored by its first ingest)"
    )
    contract: str = Field(
        "contracts/demo.yaml", description="contract file (YAML): needed to ingest; else the lake's copy wins"
    )
    allow_incompatible_contract: bool = Field(
        False, description="accept a contract change that breaks the stored version (features are refit)"
    )
    source: str | None = Field(
        None, description="file, folder, or s3:// URI to ingest; empty: the synthetic source"
    )
    chunk_rows: int = Field(
        250_000, ge=1000, description="rows read per chunk; bounds memory for large files"
    )
    prewrite_clean: bool = Field(
        True,
        description="write a batch's clean/D files while Great Expectations confirms its verdict (local lakes); "
        "committed only if the verdict holds and no row moved, removed otherwise",
    )
    lake_slot_timeout_seconds: float = Field(
        3600.0,
        gt=0,
        description="longest wait for the lake-<dataset> slot (another ingest or features build of the dataset)",
    )
    executor: Literal["local", "dask"] = Field(
        "local",
        description="where the files of a folder / S3 prefix are parsed and validated: local = one after "
        "another in the flow process; dask = in parallel on a Dask cluster (the flow process still commits)",
    )
    dask_address: str | None = Field(
        None,
        description="scheduler of an existing Dask cluster (tcp://host:8786); empty: a LocalCluster per run",
    )
    dask_workers: int = Field(
        2, ge=1, description="worker processes of the LocalCluster started when dask_address is empty"
    )


class ValidationConfig(_Section):
    quarantine_max_fraction: float | None = Field(
        None, ge=0, le=1, description="overrides the contract's quarantine_max_fraction when set"
    )
    data_docs: bool = Field(
        True, description="write Great Expectations Data Docs under $LOOPLINE_HOME/data_docs"
    )
    data_docs_index_runs: int = Field(
        50,
        ge=1,
        description="validation runs the Data Docs index lists, newest first (each batch's own page stays): "
        "GX re-reads every listed run's result at each batch",
    )
    bad_row_examples: int = Field(5, ge=0, description="examples of bad rows per expectation in artifacts")
    gx_scope: Literal["audit", "full"] = Field(
        "audit",
        description="rows Great Expectations re-validates: audit = every row the gate rejects plus a sample of "
        "the accepted ones (fast); full = every row (as slow as a plain GX run)",
    )
    gx_sample_rows: int = Field(
        10_000, ge=0, description="accepted rows per batch GX re-validates in audit scope"
    )
    gx_max_rows_per_run: int = Field(
        500_000, ge=1000, description="rows GX validates in one run; bounds the memory of a long batch"
    )


class FeaturesConfig(_Section):
    numeric: Literal["passthrough", "standardise", "log1p", "clip"] = Field(
        "standardise", description="default transform for int/float columns"
    )
    numeric_overrides: dict[str, Literal["passthrough", "standardise", "log1p", "clip"]] = Field(
        default_factory=dict, description="per-column transform"
    )
    clip_quantiles: tuple[float, float] = Field(
        (0.01, 0.99), description="bounds for `clip`, fitted on train"
    )
    categorical: Literal["onehot", "index"] = Field(
        "onehot", description="encoding; both keep an 'unknown' bucket"
    )
    timestamp_parts: list[Literal["hour", "dayofweek", "month", "dayofyear", "year"]] = Field(
        default_factory=lambda: ["hour", "dayofweek", "month"]
    )
    split_fractions: tuple[float, float, float] = Field(
        (0.8, 0.1, 0.1), description="train/valid/test shares; the split is a stable hash of the id"
    )


class TrainingConfig(_Section):
    model: str = Field("loopline.train.models:mlp", description="model factory 'module:function'")
    hidden_sizes: list[int] = Field(
        default_factory=lambda: [128, 64], description="layers of the default MLP"
    )
    dropout: float = Field(0.0, ge=0, lt=1)
    max_steps: int | None = Field(
        300, ge=1, description="optimizer steps; wins over epochs when both are set"
    )
    epochs: int | None = Field(None, ge=1)
    batch_size: int = Field(512, ge=1)
    lr: float = Field(3e-3, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    scheduler: Literal["none", "cosine", "step"] = "cosine"
    warmup_steps: int = Field(10, ge=0)
    seed: int = 0
    deterministic: bool = Field(True, description="bit-exact resume on CPU; slower kernels on GPU")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    devices: int = Field(1, ge=1, description="processes (GPUs) per node (DDP via torchrun when > 1)")
    nodes: int = Field(1, ge=1, description="machines, one torchrun agent each (c10d rendezvous when > 1)")
    node_rank: int | None = Field(
        None,
        ge=0,
        description="this machine's rank; empty: LOOPLINE_NODE_RANK, JOB_COMPLETION_INDEX or PET_NODE_RANK",
    )
    rdzv_endpoint: str | None = Field(
        None,
        description="HOST[:PORT] where node 0 hosts the rendezvous (port 29400 if left out); empty: "
        "LOOPLINE_RDZV_ENDPOINT or PET_MASTER_ADDR:PET_MASTER_PORT",
    )
    rdzv_timeout_seconds: float = Field(
        1800.0,
        gt=0,
        description="how long a node keeps trying to reach node 0's rendezvous store (node 0 may still be "
        "pulling a multi-GB image)",
    )
    rdzv_join_timeout_seconds: float = Field(
        1800.0, gt=0, description="how long the nodes wait for the last of them to join (slow image pulls)"
    )
    launcher: Literal["local", "kubernetes", "kubeflow"] = Field(
        "local",
        description="who starts the nodes: local = this process is one node; kubernetes = an Indexed Job + "
        "headless Service; kubeflow = a Kubeflow Trainer TrainJob",
    )
    checkpoint_every_steps: int = Field(50, ge=1)
    checkpoint_every_seconds: float = Field(
        300.0, gt=0, description="also checkpoint on wall time, for slow steps"
    )
    keep_last_checkpoints: int = Field(3, ge=1)
    eval_every_steps: int = Field(100, ge=1, description="validation pass cadence (also at every epoch end)")
    early_stopping_metric: str = Field("val_loss", description="metric watched for early stopping")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="evaluations without improvement; None: off"
    )
    keep_best_weights: bool = Field(
        True,
        description="end with the best evaluated weights (by early_stopping_metric), not the last step's; "
        "off: the last step's, unless early stopping is on",
    )
    log_every_steps: int = Field(20, ge=1)
    spot_notice_url: str | None = Field(None, description="HTTP URL polled for a spot/preemption notice")
    spot_notice_file: str | None = Field(None, description="file whose existence is a preemption notice")
    spot_poll_seconds: float = Field(5.0, gt=0)
    gpu_price_per_hour: float = Field(2.0, ge=0, description="USD per GPU-hour for the cost summary")
    gpu_sample_seconds: float = Field(1.0, gt=0)
    gpu_slot: str | None = Field(
        "gpu",
        description="Prefect global concurrency limit a GPU training takes (occupy = nodes x devices); None: none",
    )
    gpu_slot_on_cpu: bool = Field(False, description="take the slot for CPU trainings too (serialises them)")
    gpu_slot_timeout_seconds: float = Field(
        43200.0, gt=0, description="longest wait for the gpu_slot slots (12 h: a queue of long trainings)"
    )
    mig_profile: str | None = Field(
        None,
        pattern=r"^([0-9]+c\.)?[0-9]+g\.[0-9]+gb$",
        description="MIG slice to train on, e.g. 1g.10gb: the gpu pool's pod asks for nvidia.com/mig-<profile> "
        "(infra/work-pools/kubernetes-gpu-mig.json); None: whole GPUs (nvidia.com/gpu)",
    )


class EvaluationConfig(_Section):
    primary_metric: str | None = Field(
        None, description="None: roc_auc (binary), accuracy (multiclass), rmse (regression)"
    )
    min_score: float | None = Field(
        None,
        description="absolute bar for the primary metric: a floor (roc_auc >= x), a ceiling for errors (rmse <= x)",
    )
    min_improvement: float = Field(
        0.0, description="over the champion, in the primary metric's units; negative allows a lateral move"
    )
    max_slice_regression: float | None = Field(
        0.05,
        description="largest allowed drop of the primary metric on any judged slice; None: slices do not gate",
    )
    min_slice_rows: int = Field(
        200, ge=1, description="smaller slices are reported, not judged: too noisy to block on"
    )
    require_ci: bool = Field(False, description="the CI's lower bound must clear min_improvement")
    bootstrap_samples: int = Field(1000, ge=10, description="bootstrap replicates of candidate - champion")
    seed: int = 0
    infra_sample_rows: int = Field(
        64, ge=1, description="real test rows scored by infra validation (plus edge rows)"
    )
    infra_timeout_seconds: float = Field(
        600.0, gt=0, description="limit for loading and scoring in a fresh process"
    )
    infra_pyfunc_check: bool = Field(
        False,
        description="infra validation also loads with mlflow.pyfunc.load_model (the loader of `mlflow models "
        "serve`) and holds it to the model server's predictions; costs an mlflow import per validation",
    )
    lock_timeout_seconds: float = Field(
        900.0, gt=0, description="wait for another promotion of the same model"
    )
    promotion_slot_timeout_seconds: float = Field(
        3600.0, gt=0, description="longest wait for the promote-<model> slot (another promotion or rollback)"
    )


class ServingConfig(_Section):
    host: str = Field("127.0.0.1", description="bind address; loopback unless told otherwise")
    port: int = Field(8080, ge=0, le=65535)
    max_batch_size: int = Field(256, ge=1, description="rows per model call in dynamic batching")
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        description="how long a batch may wait for requests still being parsed (never for idle clients)",
    )
    poll_seconds: float = Field(
        10.0, ge=0, description="registry poll for a moved @champion/@challenger; 0: off"
    )
    challenger_weight: float = Field(0.0, ge=0, le=1, description="share of requests answered by @challenger")
    shadow: bool = Field(False, description="score @challenger beside the champion (logged, never returned)")
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: a CUDA GPU when torch sees one")
    inline_max_rows: int = Field(
        32, ge=0, description="batches up to this many rows run on the event loop, not the model thread"
    )
    torch_threads: int = Field(
        1, ge=1, description="intra-op threads per model call; 1 leaves the other cores to HTTP and JSON"
    )
    inference_log: bool = Field(True, description="append every scored row to predictions/M")
    log_queue_rows: int = Field(
        1_000_000, ge=1000, description="inference-log queue bound; overflow is counted"
    )
    log_flush_seconds: float = Field(
        5.0, gt=0, description="inference-log write cadence (one Delta commit each)"
    )
    log_flush_rows: int = Field(100_000, ge=1, description="write sooner once this many rows wait")
    log_write_attempts: int = Field(
        4, ge=1, description="inference-log tries per flush before its rows go to the dead-letter table"
    )
    log_retry_seconds: float = Field(
        0.5, gt=0, description="first inference-log retry delay; doubles each try, at most 30 s"
    )
    feedback: bool = Field(
        True, description="answer POST /feedback: labels land in feedback/M (needs the inference log's lake)"
    )
    feedback_queue_rows: int = Field(
        100_000, ge=1, description="labels waiting for their commit; past it POST /feedback answers 503"
    )
    feedback_write_attempts: int = Field(
        4, ge=1, description="feedback/M commit tries before the waiting requests get 503 (they retry)"
    )
    max_inflight_requests: int = Field(
        64,
        ge=1,
        description="scoring requests handled at once; past it: 503 with Retry-After. An admitted request "
        "waits about this many / the served rate; raise it for bigger batches of one-row requests",
    )
    max_queue_rows: int = Field(
        8192, ge=1, description="rows waiting for one model's next call; past it: 503 with Retry-After"
    )
    max_shadow_tasks: int = Field(
        64, ge=0, description="shadow scorings in flight; past it a shadow call is skipped and counted"
    )
    max_connections: int = Field(
        2048, ge=1, description="open connections uvicorn takes before its own plain 503 (a last resort)"
    )
    retry_after_seconds: int = Field(1, ge=1, description="the Retry-After header of a 503")
    graceful_timeout_seconds: float = Field(30.0, gt=0, description="on SIGTERM: time for in-flight requests")
    deploy: bool = Field(
        True, description="the lifecycle puts a promoted champion into service (starts a server if none runs)"
    )
    confirm_timeout_seconds: float = Field(
        60.0, gt=0, description="deployment: wait this long for /version to show the champion"
    )


class DriftConfig(_Section):
    share_threshold: float = Field(0.5, gt=0, le=1)
    window_hours: float = Field(24.0, gt=0)
    min_rows: int = Field(
        100,
        ge=1,
        description="a window with fewer rows is too small to judge: the check is skipped (no verdict, no event); "
        "on a handful of rows every distance looks like drift",
    )
    methods: dict[str, Literal["psi", "ks", "wasserstein", "jensenshannon", "chisquare"]] = Field(
        default_factory=dict, description="per-column method; unset columns get Evidently-like defaults"
    )
    thresholds: dict[str, float] = Field(default_factory=dict, description="per-method threshold override")
    correction: Literal["none", "bonferroni", "fdr_bh"] = "none"
    bins: int = Field(20, ge=2)
    cdf_bins: int = Field(
        256,
        ge=16,
        description="fine quantile bins per numeric feature in the reference profile (Wasserstein, KS)",
    )
    small_reference_rows: int = Field(
        1000,
        ge=0,
        description="references with at most this many rows get KS / chi-square (Evidently) and keep raw values",
    )
    prediction_method: Literal["psi", "ks", "wasserstein", "jensenshannon", "chisquare"] | None = Field(
        None, description="method for the prediction distribution; unset: the same defaults as features"
    )


class RetrainConfig(_Section):
    cooldown_hours: float = Field(
        6.0, ge=0, description="no event-triggered retrain of a model within this time of the last one"
    )
    min_new_rows: int = Field(1000, ge=0, description="new clean rows that trigger a retrain on ingest")
    train_on_pool: bool = Field(
        True,
        description="a deployed retrain runs the `train` deployment (work pool gpu) instead of training in-process",
    )
    gate_wait_seconds: float = Field(
        300.0, ge=0, description="how long a retrain waits for earlier, undecided retrain runs of its model"
    )
    train_timeout_seconds: float = Field(
        86400.0,
        gt=0,
        description="longest wait for the `train` deployment run on the gpu pool (queue + training)",
    )
    on_drift_without_champion: bool = Field(
        False,
        description="a drift event for a model with no @champion (or unknown) trains one; off: events are hints",
    )


class RolloutConfig(_Section):
    """How a candidate that passed the offline gate reaches traffic (loopline/release/rollout.py).

    direct: it becomes @champion at once (100% of traffic). canary: it becomes @challenger and takes `steps`
    percent of requests in turn (sticky by X-Request-Key), each step judged on live traffic by the
    `canary-analysis` flow, which ramps, holds, aborts or, at 100%, promotes. shadow: it scores a copy of
    every request (logged, never returned), is judged the same way, with no ramp."""

    mode: Literal["direct", "canary", "shadow"] = Field(
        "direct", description="direct: promote at once; canary: ramp through `steps`; shadow: judge on copies"
    )
    steps: list[float] = Field(
        default_factory=lambda: [5.0, 25.0, 50.0, 100.0],
        min_length=1,
        description="canary traffic shares in percent, increasing, the last 100 (then it is promoted)",
    )
    min_step_seconds: float = Field(
        600.0, ge=0, description="shortest time at each step: slow regressions and diurnal mix show up"
    )
    min_step_requests: int = Field(
        500, ge=1, description="fewest challenger requests at each step before it may ramp or abort"
    )
    require_approval: bool = Field(False, description="a promotion waits for a human decision in the UI")
    approval_timeout_hours: float = Field(24.0, gt=0, description="no decision within this: rejected")
    analysis_interval_seconds: float = Field(
        30.0, gt=0, description="how often the canary analysis measures the current step"
    )
    max_error_rate_increase: float = Field(
        0.01, ge=0, description="challenger error rate may exceed the champion's by at most this (absolute)"
    )
    max_latency_ratio: float = Field(
        1.5, ge=1, description="challenger p50/p99 latency may be at most this times the champion's ..."
    )
    latency_slack_ms: float = Field(
        5.0, ge=0, description="... unless within this many ms of it (histogram buckets are coarse)"
    )
    prediction_shift_method: Literal["psi", "ks", "wasserstein", "jensenshannon"] = Field(
        "psi", description="drift method comparing challenger and champion prediction distributions"
    )
    prediction_shift_threshold: float | None = Field(
        0.25, description="shift at or over this aborts (p-value methods: under it); psi 0.25 = major shift"
    )
    serving_urls: list[str] = Field(
        default_factory=list,
        description="servers whose /metrics the analysis reads; empty: the model's known servers",
    )
    step_timeout_seconds: float = Field(
        3600.0, gt=0, description="a step without enough traffic for a verdict within this is aborted"
    )
    withdraw_timeout_seconds: float = Field(
        60.0, gt=0, description="after an abort: wait this long for every server to drop the challenger"
    )

    @field_validator("steps")
    @classmethod
    def _increasing_to_100(cls, steps: list[float]) -> list[float]:
        if any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)) or steps[-1] != 100:
            raise ValueError(f"steps {steps}: percentages in (0, 100], increasing, ending at 100")
        return steps


class FeedbackConfig(_Section):
    """Live performance: predictions/M joined with feedback/M (loopline.monitoring.live)."""

    windows_hours: list[float] = Field(
        default_factory=lambda: [1.0, 24.0, 168.0],
        description="time windows of the live metric (besides all labelled rows), in hours before now",
    )
    min_labelled_rows: int = Field(
        30, ge=1, description="fewer labelled rows than this in a window: no live metric for it"
    )
    performance_tolerance: float | None = Field(
        None,
        ge=0,
        description="drift: the champion's live metric worse than its evaluation metric by more than this "
        "(the metric's unit) counts as drift; None: reported, never a trigger",
    )


class LakeConfig(_Section):
    """Housekeeping of the lake's Delta tables: the `maintenance` deployment and `loopline maintenance`
    (loopline/storage/maintenance.py says what runs on which table, and why)."""

    predictions_retention_days: float | None = Field(
        30,
        gt=0,
        description="delete predictions/M rows scored (_scored_at, UTC) longer ago; null keeps them all",
    )
    file_retention_hours: int = Field(
        168,
        ge=0,
        description="vacuum keeps files a table stopped using for this long, so time travel and readers of an "
        "older snapshot keep working (a week: Delta's default). 0 is for tests: it can delete a file a writer "
        "has written but not committed yet",
    )
    compact_min_files: int = Field(
        16,
        ge=2,
        description="compact a table once it has this many files under the target size (~1 per commit)",
    )
    vacuum_pinned_tables: bool = Field(
        False,
        description="also vacuum clean/D and features/D, keeping every version an MLflow run recorded "
        "(data.clean_version, data.features_version); off: nothing there is deleted, every version stays readable",
    )


class LifecycleConfig(_Section):
    home: str = Field(default_factory=default_home, description="LOOPLINE_HOME: lake, mlflow.db, checkpoints")
    model_name: str | None = Field(None, description="registered model name; default: the dataset name")
    data: DataConfig = Field(default_factory=DataConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    lake: LakeConfig = Field(default_factory=LakeConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)

    def with_inputs(
        self,
        *,
        contract: str | None = None,
        source: str | None = None,
        dataset: str | None = None,
        model: str | None = None,
    ) -> LifecycleConfig:
        """This config with the few inputs people change per run (a flow's top-level parameters)."""
        data = {k: v for k, v in (("contract", contract), ("source", source), ("dataset", dataset)) if v}
        update: dict[str, Any] = {"data": self.data.model_copy(update=data)} if data else {}
        if model:
            update["model_name"] = model
        return self.model_copy(update=update) if update else self

    def for_dataset(self, dataset: str | None) -> LifecycleConfig:
        """This config working on `dataset` (unchanged when None): its contract comes from the lake."""
        if not dataset:
            return self
        return self.model_copy(update={"data": self.data.model_copy(update={"dataset": dataset})})


def _parse_value(text: str) -> Any:
    """`--set` values are YAML scalars/lists: `400`, `0.1`, `true`, `[a, b]`, `null`, or plain text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides to a nested dict (returns a new dict)."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        keys = [k for k in dotted.strip().split(".") if k]
        if not keys:
            raise ConfigError(f"--set {item!r}: empty key")
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {key!r} is not a section")
        node[keys[-1]] = _parse_value(raw)
    return out


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> LifecycleConfig:
    """Read `--config FILE` (YAML) if given, apply `--set` overrides, validate. Errors name the key."""
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {p} does not exist") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p}: the top level must be a mapping of sections")
    data = apply_overrides(data, overrides or [])
    try:
        return LifecycleConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        source = f" in {path}" if path else ""
        raise ConfigError(f"config key {where!r}{source}: {first['msg']}") from exc


def config_to_flat_params(cfg: BaseModel, prefix: str = "") -> dict[str, str]:
    """Flatten a config to `section.key -> str` for MLflow params (values truncated to MLflow's limit)."""
    flat: dict[str, str] = {}
    for key, value in cfg.model_dump(mode="json").items():
        _flatten(flat, f"{prefix}{key}", value)
    return flat


def _flatten(flat: dict[str, str], key: str, value: Any) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(flat, f"{key}.{k}", v)
    else:
        flat[key] = json.dumps(value)[:6000] if not isinstance(value, str) else value[:6000]


def resolve_config(config: LifecycleConfig | dict | None) -> LifecycleConfig:
    """A flow's config: as given, else the YAML that `loopline up --config` exported as LOOPLINE_CONFIG,
    else the defaults (a deployment run started by a schedule or an event carries no config of its own)."""
    if isinstance(config, LifecycleConfig):
        return config
    if isinstance(config, dict):
        return LifecycleConfig.model_validate(config)
    return load_config(os.environ.get("LOOPLINE_CONFIG") or None)
