"""`loopline`: the command line, a face over the flows.

Everything heavy (prefect, mlflow, torch, great_expectations) is imported inside the command that needs
it, so `loopline --help` and `loopline serve` start fast. Each command ends with a short summary
(flows/render/); with `--json` the last line printed is one JSON object with the command's result
instead. Exit codes: 0 ok, 2 bad input or usage, 3 the gate rejected the batch, 1 anything unexpected.
A user error prints one paragraph, no traceback; `loopline --verbose CMD` shows every log line and
warning (flows/console.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="loopline: the ML lifecycle on Prefect.")


@app.callback()
def _global_options(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            envvar="LOOPLINE_VERBOSE",
            help="show everything: Prefect's INFO logs, tracebacks of user errors, third-party logs and warnings",
        ),
    ] = False,
) -> None:
    from flows import console

    console.configure(verbose=verbose)


ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="LifecycleConfig YAML file")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="override one key: section.key=value (repeatable)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as one JSON object on the last line")]
DatasetOpt = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        "-d",
        help="dataset name; its contract comes from the lake (default: the contract file's)",
    ),
]


def _config(config: Path | None, sets: list[str] | None, extra: list[str] | None = None):
    from loopline.config import load_config

    return load_config(config, [*(sets or []), *(extra or [])])


def _quiet_prefect(home: str) -> None:
    """Keep telemetry off and the console readable; the runs still log to the Prefect API."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the console shows warnings and up; the runs' INFO logs still reach the Prefect API (the UI's log view)
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    _use_stack(home, local_api=True)
    _quiet_console()


def _quiet_console() -> None:
    """After every setting above (Prefect reads them when it configures its logging, on import): user
    errors' tracebacks and third-party chatter off the console (flows/console.py)."""
    from flows import console

    console.install()


def _use_stack(home: str, local_api: bool = False) -> None:
    """When `loopline up` started a stack for this LOOPLINE_HOME, point Prefect and MLflow at it. Without
    one, with `local_api` (the commands that run flows), use this home's local Prefect API, started by the
    first such command and shared by the rest (flows/local_api.py); never with PREFECT_API_URL set."""
    state = Path(home) / "stack.json"  # the config's home (`--set home=...`), not only LOOPLINE_HOME
    if not state.exists():
        if local_api:
            from flows import local_api as api

            api.use(home)
        return
    try:
        info = json.loads(state.read_text())
    except ValueError:
        return
    if info.get("prefect_api_url"):
        os.environ.setdefault("PREFECT_API_URL", info["prefect_api_url"])
    if info.get("mlflow_tracking_uri"):
        os.environ.setdefault("MLFLOW_TRACKING_URI", info["mlflow_tracking_uri"])


def _export_lake(home: str) -> None:
    """With LOOPLINE_LAKE_BLOCK set, put the block's lake into this process's environment, where the core
    code this command runs reads it (`Lake.from_env`), as do the processes it starts (blocks/lake.py).
    The block is read from the API the flows use. Without the variable the environment already is the
    lake, and Prefect is not imported."""
    if not os.environ.get("LOOPLINE_LAKE_BLOCK"):
        return
    _quiet_prefect(home)
    from blocks.lake import export_lake

    export_lake(home)


def _emit(result: Any, as_json: bool, command: str, **context: Any) -> None:
    """`--json`: one JSON line. Otherwise the command's summary (flows/render/)."""
    if as_json:
        print(json.dumps(result, default=str, sort_keys=True))
    else:
        from flows.render import show

        show(command, result, **context)


def _progress(as_json: bool):
    """Progress bars (training, ingest) while the block runs, on a terminal only (flows/console.py)."""
    from flows import console

    return console.progress(console.progress_wanted(as_json))


def _fail(exc: BaseException, as_json: bool) -> None:
    """One clear paragraph and the right exit code for errors a user can cause (a LooplineError, or an
    error one caused); a traceback otherwise."""
    from flows.console import api_outage, user_error, verbose
    from loopline.errors import DataQualityError, LooplineError

    if verbose() and (user_error(exc) is not None or api_outage(exc) is not None):
        import traceback

        traceback.print_exception(exc)  # --verbose: the whole story, then the paragraph
    outage = api_outage(exc) if user_error(exc) is None else None
    if outage is not None:
        _fail_outage(outage, as_json)
    exc = user_error(exc) or exc  # the user error itself, also when it caused the one raised
    if type(exc).__name__ == "Preempted":  # SIGTERM / spot notice: the checkpoint is written, rerun resumes
        typer.echo(f"preempted: {exc}. Run the same command again to resume.", err=True)
        raise typer.Exit(143)
    if not isinstance(exc, LooplineError):
        raise exc
    if isinstance(exc, DataQualityError) and exc.summary and not as_json:
        _emit(exc.summary, False, "ingest")  # which batches, how many rows: the table, then why
    typer.echo(f"error: {_paragraph(str(exc))}", err=True)
    if as_json:
        payload: dict[str, Any] = {"error": str(exc), "type": type(exc).__name__}
        if isinstance(exc, DataQualityError):
            payload.update(exc.summary)
        print(json.dumps(payload, default=str, sort_keys=True))
    raise typer.Exit(exc.exit_code)


def _fail_outage(exc: BaseException, as_json: bool) -> None:
    """The Prefect API stopped answering mid-command (Prefect's client retries a lost connection, but not one
    it never had): exit 1 with what happened and what to do. A rerun is safe: every commit is idempotent
    per batch, so what landed is reused and nothing is doubled."""
    api = os.environ.get("PREFECT_API_URL") or "the local Prefect API"
    message = (
        f"the Prefect API at {api} stopped answering during this command ({type(exc).__name__}: {exc}). "
        "What was committed stays committed, and a rerun doubles nothing: once the API answers again "
        "(`loopline up` restarts a stopped stack), run the same command again."
    )
    typer.echo(f"error: {_paragraph(message)}", err=True)
    if as_json:
        print(json.dumps({"error": message, "type": "PrefectAPIUnavailable"}, sort_keys=True))
    raise typer.Exit(1)


def _paragraph(text: str) -> str:
    """A message as one paragraph that is safe on a terminal: bytes a file put in it (a parser quoting a
    binary row) are escaped, blank lines dropped."""
    text = "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in text)
    return "\n".join(line for line in text.splitlines() if line.strip())


@app.command()
def ingest(
    contract: Annotated[Path, typer.Option(help="dataset contract YAML")] = Path("contracts/demo.yaml"),
    source: Annotated[
        str | None, typer.Option(help="file, folder or s3:// URI; default: the synthetic demo batch")
    ] = None,
    allow_incompatible: Annotated[
        bool,
        typer.Option(help="accept a contract change that breaks the lake's version (features are refit)"),
    ] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ingest a source through the validation gate into raw/, clean/ and quarantine/. The first ingest of a
    dataset stores its contract in the lake; later commands find it there by the dataset's name."""
    try:
        from loopline.data.contracts import load_contract

        load_contract(contract)  # a broken contract is exit 2 before anything starts
        extra = [f"data.contract={contract}"] + ([f"data.source={source}"] if source else [])
        if allow_incompatible:
            extra.append("data.allow_incompatible_contract=true")
        cfg = _config(config, set_, extra)
        _quiet_prefect(cfg.home)
        from flows.ingest import ingest_flow
        from loopline.data.ingest import summarise_dicts

        with _progress(as_json):
            results = ingest_flow(cfg)
        _emit(summarise_dicts(results), as_json, "ingest")
    except Exception as exc:
        _fail(exc, as_json)


@app.command()
def features(
    dataset: DatasetOpt = None,
    refit: Annotated[bool, typer.Option(help="fit a new transform and rewrite features/D")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Bring features/D up to date with clean/D."""
    try:
        cfg = _config(config, set_)
        _quiet_prefect(cfg.home)
        from flows.features import features_flow

        _emit(features_flow(cfg, refit=refit, dataset=dataset), as_json, "features")
    except Exception as exc:
        _fail(exc, as_json)


@app.command()
def train(
    dataset: DatasetOpt = None,
    model: Annotated[
        str | None, typer.Option(help="registered model name (default: the dataset name)")
    ] = None,
    fresh: Annotated[bool, typer.Option(help="ignore checkpoints of this run key and start over")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train on features/D and register a new model version (not promoted); resumes from checkpoints."""
    try:
        cfg = _config(config, set_, [f"model_name={model}"] if model else [])
        _quiet_prefect(cfg.home)
        from flows.training import train_flow

        with _progress(as_json):
            result = train_flow(cfg, dataset=dataset, fresh=fresh)
        _emit(result, as_json, "train")
    except Exception as exc:
        _fail(exc, as_json)


ModelOpt = Annotated[
    str | None, typer.Option("--model", help="registered model name (default: the dataset name)")
]
VersionOpt = Annotated[int | None, typer.Option("--version", help="model version (default: the newest)")]


@app.command()
def evaluate(
    model: ModelOpt = None,
    version: VersionOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score a version and @champion on the same held-out test split; nothing moves."""
    try:
        cfg = _config(config, set_)
        _quiet_prefect(cfg.home)
        from flows.promotion import evaluation_flow

        _emit(evaluation_flow(cfg, model=model, version=version), as_json, "evaluate")
    except Exception as exc:
        _fail(exc, as_json)


@app.command()
def promote(
    model: ModelOpt = None,
    version: VersionOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Infra-validate, evaluate against @champion and promote through the gate (or refuse, with the reason)."""
    try:
        cfg = _config(config, set_)
        _quiet_prefect(cfg.home)
        from flows.promotion import promotion_flow

        _emit(promotion_flow(cfg, model=model, version=version), as_json, "promote")
    except Exception as exc:
        _fail(exc, as_json)


@app.command()
def rollback(
    model: Annotated[str, typer.Option("--model", help="registered model name")],
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="roll back even to a champion trained on a contract the current one broke"
        ),
    ] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Move @champion back to the previous champion (repeatable down the history)."""
    try:
        cfg = _config(config, set_)
        _quiet_prefect(cfg.home)
        from flows.promotion import rollback_flow

        _emit(rollback_flow(model, cfg, force=force), as_json, "rollback")
    except Exception as exc:
        _fail(exc, as_json)


@app.command()
def serve(
    model: Annotated[
        str | None, typer.Option("--model", help="registered model name (default: the dataset name)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="bind address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8080)")] = None,
    challenger_weight: Annotated[
        float | None, typer.Option(help="share of traffic routed to @challenger")
    ] = None,
    shadow: Annotated[bool, typer.Option(help="score @challenger in the shadow, never return it")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Serve models:/M@champion over MLflow's scoring protocol (no Prefect in this process, except to read
    the LOOPLINE_LAKE_BLOCK block)."""
    try:
        extra = [
            f"serving.{k}={v}"
            for k, v in (("host", host), ("port", port), ("challenger_weight", challenger_weight))
            if v is not None
        ]
        cfg = _config(config, set_, extra + (["serving.shadow=true"] if shadow else []))
        _use_stack(cfg.home)
        _export_lake(cfg.home)  # the inference log goes where drift reads
        from loopline.packaging.registry import model_name_for
        from loopline.serving import run_server

        name = model or model_name_for(cfg)
        run_server(name, cfg.serving, tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"), home=cfg.home)
    except Exception as exc:
        _fail(exc, False)


@app.command()
def drift(
    model: Annotated[
        str | None, typer.Option("--model", help="registered model name (default: the dataset name)")
    ] = None,
    current: Annotated[
        str | None,
        typer.Option(
            help="a data file (local or s3://) or batch:ID / batch:latest; default: the serving log"
        ),
    ] = None,
    window_hours: Annotated[
        float | None, typer.Option(help="hours of predictions/M to compare (default drift.window_hours)")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare a window of data with the champion's reference profile; emit loopline.drift.detected on drift."""
    try:
        cfg = _config(config, set_)
        _quiet_prefect(cfg.home)
        from flows.drift import drift_flow

        _emit(drift_flow(cfg, model=model, current=current, window_hours=window_hours), as_json, "drift")
    except Exception as exc:
        _fail(exc, as_json)


@app.command()
def feedback(
    model: Annotated[str, typer.Option("--model", help="registered model name (feedback/M, predictions/M)")],
    source: Annotated[
        str, typer.Option("--source", help="a CSV or Parquet file (local or s3://): request_id, row, label")
    ],
    dataset: Annotated[
        str | None, typer.Option("--dataset", "-d", help="the dataset whose contract types the labels")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Land labels in bulk in feedback/M (each (request_id, row) once), then refresh the live metric gauges.
    Bad rows are rejected with their line, field and reason, and written to a file; the rest land."""
    try:
        cfg = _config(config, set_)
        _quiet_console()
        from tasks.feedback import load_feedback

        result = load_feedback(cfg, model, source, dataset)
        if as_json:
            _emit(result, True, "feedback")
        else:
            print(
                f"feedback/{model}: {result['rows']} rows read from {result['source']}: "
                f"{result['inserted']} new, {result['updated']} changed, {result['unchanged']} already there, "
                f"{result['rejected']} rejected"
            )
            for bad in result["examples"]:
                print(f"  line {bad['line']}, {bad['field']} {bad['value']!r}: {bad['reason']}")
            if result["rejected_file"]:
                print(f"rejected rows: {result['rejected_file']}")
    except Exception as exc:
        _fail(exc, as_json)


@app.command()
def maintenance(
    dataset: Annotated[
        str | None, typer.Option("--dataset", "-d", help="only this dataset's tables (default: every table)")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="only this model's tables: predictions/M (+ its dead letters), drift/M, feedback/M",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="commit and delete nothing; report what would happen")
    ] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compact the lake's Delta tables, delete predictions older than lake.predictions_retention_days and
    vacuum files unused for lake.file_retention_hours. Exit 1 when a table's commits kept conflicting."""
    try:
        cfg = _config(config, set_)
        _quiet_prefect(cfg.home)
        from flows.maintenance import maintenance_flow

        result = maintenance_flow(cfg, dataset=dataset, model=model, dry_run=dry_run)
        _emit(result, as_json, "maintenance")
    except Exception as exc:
        _fail(exc, as_json)
    if result["failed"]:
        raise typer.Exit(1)


@app.command()
def up(
    postgres_url: Annotated[
        str | None, typer.Option(help="PostgreSQL URL for the Prefect server (default: SQLite)")
    ] = None,
    no_workers: Annotated[
        bool, typer.Option("--no-workers", help="do not start the cpu/gpu process workers")
    ] = False,
    compose: Annotated[
        bool,
        typer.Option("--compose", help="the whole platform in containers (infra/compose.yaml; needs Docker)"),
    ] = False,
    env_file: Annotated[str | None, typer.Option(help="with --compose: the env file of its secrets")] = None,
    prefect_port: Annotated[
        int | None, typer.Option(help="the Prefect server's port (default 4200, else a free one)")
    ] = None,
    mlflow_port: Annotated[
        int | None, typer.Option(help="the MLflow server's port (default 5000, else a free one)")
    ] = None,
    pool_type: Annotated[
        str,
        typer.Option(
            help="process: start the stack here; kubernetes, kubernetes-mig or docker: set up the Prefect server "
            "at PREFECT_API_URL with those pools' templates (infra/work-pools) and deploy prefect.yaml there"
        ),
    ] = "process",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a real Prefect server, an MLflow server, work pools, limits, blocks, deployments and workers."""
    try:
        if compose:
            from flows.stack.compose import compose_up
            from flows.stack.remote import bootstrap_remote

            cfg = _config(config, set_)
            info = compose_up(env_file)
            # the platform's Prefect server gets the pools (process workers in containers), limits, blocks and
            # prefect.yaml, deployed from this checkout with the image's project dir in its pull step
            info["bootstrap"] = bootstrap_remote(
                "process", cfg.retrain.cooldown_hours, info["prefect_api_url"]
            )
            _emit(info, as_json, "up")
            return
        cfg = _config(config, set_)
        if pool_type != "process":
            from flows.stack.remote import bootstrap_remote
            from flows.work_pools import pool_templates

            pool_templates(pool_type)  # an unknown type is exit 2 before anything is contacted
            _emit(bootstrap_remote(pool_type, cfg.retrain.cooldown_hours), as_json, "up")
            return
        from flows.stack import up as stack_up

        info = stack_up(
            cfg.home,
            postgres_url=postgres_url,
            with_workers=not no_workers,
            prefect_port=prefect_port,
            mlflow_port=mlflow_port,
            config=cfg,  # with the --set overrides: the workers' runs use the same config
        )
        _emit(info, as_json, "up")
    except Exception as exc:
        _fail(exc, as_json)


@app.command()
def down(
    compose: Annotated[bool, typer.Option("--compose", help="stop the compose platform")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop what `loopline up` (and the deploy stage) started for this LOOPLINE_HOME, and only that."""
    try:
        if compose:
            from flows.stack.compose import compose_down

            _emit(compose_down(), as_json, "down")
            return
        cfg = _config(config, set_)
        from flows.local_api import stop as local_api_stop
        from flows.stack import down as stack_down
        from loopline.release.deploy import stop_all_servers

        result = {"model_servers_stopped": stop_all_servers(cfg.home)}
        result.update(stack_down(cfg.home))
        result["local_api"] = local_api_stop(cfg.home)
        if result["local_api"]["stopped"]:  # shown with the stack's processes
            result["stopped"] = [*result.get("stopped", []), "local-api"]
            result.pop("message", None)  # "nothing to stop" no longer holds
        _emit(result, as_json, "down")
    except Exception as exc:
        _fail(exc, as_json)


@app.command()
def run(
    contract: Annotated[
        Path | None, typer.Option(help="your dataset's contract YAML (first run on a dataset)")
    ] = None,
    source: Annotated[str | None, typer.Option(help="file, folder or s3:// URI to ingest")] = None,
    dataset: DatasetOpt = None,
    model: Annotated[
        str | None, typer.Option("--model", help="registered model name (default: the dataset name)")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the whole lifecycle: on your data with --contract F --source S (or --dataset D --source S for a
    dataset the lake knows); with neither, on a fresh synthetic demo batch."""
    try:
        if contract is not None:
            from loopline.data.contracts import load_contract

            load_contract(contract)  # a broken contract is exit 2 before anything starts
        cfg = _config(config, set_)
        _quiet_prefect(cfg.home)
        from flows.lifecycle import lifecycle_flow

        with _progress(as_json):
            result = lifecycle_flow(  # text parameters: "" is "not set" (None fails Prefect's validation)
                contract=str(contract) if contract else "",
                source=source or "",
                dataset=dataset or "",
                model=model or "",
                config=cfg,
            )
        _emit(result, as_json, "run", home=cfg.home)
    except Exception as exc:
        _fail(exc, as_json)


@app.command()
def status(
    dataset: Annotated[str | None, typer.Option(help="only this dataset")] = None,
    model: Annotated[str | None, typer.Option(help="only this model")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Tables, versions and batches in the lake; models in the registry."""
    try:
        cfg = _config(config, set_)
        _use_stack(cfg.home)
        _export_lake(cfg.home)
        from loopline.monitoring.status import collect_status

        _emit(collect_status(cfg, dataset=dataset, model=model), as_json, "status")
    except Exception as exc:
        _fail(exc, as_json)


@app.command()
def init(
    sample: Annotated[
        str, typer.Option("--from", help="sample to draft from: a .csv, .parquet or .jsonl file (or s3://)")
    ],
    name: Annotated[str | None, typer.Option(help="dataset name (default: the sample file's stem)")] = None,
    label: Annotated[
        str | None, typer.Option(help="label column (default: one named label/target/y/class/outcome)")
    ] = None,
    id_: Annotated[
        str | None,
        typer.Option(
            "--id", help="id column (default: a unique, non-null int/string column, id-like names first)"
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="contract file to write (default: contracts/<name>.yaml)")
    ] = None,
    force: Annotated[bool, typer.Option(help="overwrite the contract file if it exists")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Draft a dataset contract from a sample (types, nulls, ranges, categories, id, label, task) to edit."""
    try:
        from loopline.config import default_home
        from loopline.data.draft import draft_contract, write_draft

        _export_lake(default_home())  # an s3:// sample is read with the lake's credentials
        draft = draft_contract(sample, name=name, label=label, id_column=id_)
        result = draft.summary(str(write_draft(draft, out, force=force)))
        _emit(result, as_json, "init", sample=sample)
    except Exception as exc:
        _fail(exc, as_json)


def main() -> None:
    from loopline.data.allocator import start_process_allocator  # before anything imports pyarrow

    start_process_allocator()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
