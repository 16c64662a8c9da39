"""bench/promotion: evaluating a candidate against the champion on 1M test rows, and promotion latency.

Setup (cached in the home folder between runs): the demo dataset with enough rows that the test split holds
~1M (split fractions 0.05/0.05/0.9; the rows skip the validation gate, which is not measured here), a good
and a crippled model trained by run_training and registered in MLflow (SQLite).

Measured, cold caches each repeat:
- ours: `evaluate_versions` = read the raw test rows + score both models through their pyfunc + every metric
  + slices of every categorical column + a 1000-replicate paired bootstrap CI of candidate - champion.
- limit ("peer"): read the same rows + score both models through `mlflow.pyfunc` predict, nothing else:
  what any evaluation must pay. ours / limit is the price of the metrics, slices and the interval.
- reference: scikit-learn's metrics for both models, and a naive paired bootstrap (resample rows, call
  roc_auc_score twice), timed on 10 replicates and extrapolated to 1000.
- promotion latency: time from the decision to the moved alias (check-and-set + history record) over
  `--promotions` promotions, against a bare `set_registered_model_alias` (the limit).
- full promote() vs the limit, at every size of `--sizes` (the issue's goal: within 2x): v1 is champion, v2
  is promoted over it with everything on: loader gate, infra validation (the model server's loader in a fork
  of the warm template, loopline.release.infra_template; it runs while the evaluation does), evaluation with a
  1000-replicate CI, the gate, the alias move, the model card run. Caches are cleared before each promote (test rows, scores, passed
  validations); the template is closed first, so the first promote of the process pays its start
  (`first_s`), and the best of the next `--repeat` is `ours_s`: the steady state of a process that promotes
  more than once. Written as details.promote_vs_limit; the top-level ours/peer/ratio are those of the largest
  size.

    python -m bench promotion [--sizes 20000,1000000] [--repeat 2] [--promotions 10] [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from bench.common import machine

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SPLITS = (0.05, 0.05, 0.9)
PEER_NAME = "limit: read the test rows + mlflow.pyfunc predict of both models (no metrics)"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def prepare(home: Path, test_rows: int) -> dict:
    """Lake + two registered versions of model `bench`; reused when already there."""
    from loopline.config import FeaturesConfig, LifecycleConfig, SyntheticConfig
    from loopline.data.contracts import load_contract
    from loopline.storage.lake import Lake

    state = home / "bench-state.json"
    tracking = f"sqlite:///{home / 'mlflow.db'}"
    os.environ["LOOPLINE_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = tracking
    lake = Lake.from_env(str(home))
    cfg = LifecycleConfig(home=str(home), features=FeaturesConfig(split_fractions=SPLITS))
    if state.exists():
        return {**json.loads(state.read_text()), "cfg": cfg, "lake": lake, "tracking": tracking}
    from loopline.data.synthetic import generate_frame
    from loopline.train import run_training
    from loopline.train.sample_data import build_sample_features

    home.mkdir(parents=True, exist_ok=True)
    rows = int(test_rows / SPLITS[2] * 1.002)
    t0 = time.perf_counter()
    contract = load_contract(REPO / "contracts" / "demo.yaml")
    features = build_sample_features(
        lake, contract, generate_frame(SyntheticConfig(rows=rows, seed=3)), cfg=cfg.features
    )
    t1 = time.perf_counter()
    small = {
        "hidden_sizes": [64, 32],
        "batch_size": 512,
        "eval_every_steps": 1000,
        "checkpoint_every_steps": 1000,
    }
    good = cfg.model_copy(update={"training": cfg.training.model_copy(update={**small, "max_steps": 300})})
    crippled = cfg.model_copy(
        update={"training": cfg.training.model_copy(update={**small, "max_steps": 1, "lr": 0.0})}
    )
    run_training(crippled, "demo", lake=lake, tracking_uri=tracking, model_name="bench")
    run_training(good, "demo", lake=lake, tracking_uri=tracking, model_name="bench")
    info = {
        "rows": rows,
        "features_version": features["features_version"],
        "setup_s": {"data": t1 - t0, "train": time.perf_counter() - t1},
    }
    state.write_text(json.dumps(info))
    return {**info, "cfg": cfg, "lake": lake, "tracking": tracking}


def run_ours(env: dict, repeat: int) -> dict:
    from loopline.release.scoring import clear_caches, evaluate_versions

    runs = []
    for _ in range(repeat):
        clear_caches()
        c0, t0 = cpu_seconds(), time.perf_counter()
        result = evaluate_versions(
            env["cfg"], "bench", 2, lake=env["lake"], tracking_uri=env["tracking"], champion_version=1
        )
        runs.append(
            {"s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0, "parts_s": result["timings_s"]}
        )
    best = min(runs, key=lambda r: r["s"])
    return {
        **best,
        "all_s": [round(r["s"], 3) for r in runs],
        "rows": result["rows"],
        "slices": len(result["slices"]),
        "ci": result["ci"],
        "metrics": result["metrics"],
        "champion_metrics": result["champion_metrics"],
    }


def run_limit(env: dict, repeat: int) -> dict:
    """Read + score both models, no metrics: the floor under any evaluation."""
    import mlflow.pyfunc

    from loopline.release.scoring import clear_caches
    from loopline.release.testset import read_test_set

    mlflow.set_tracking_uri(env["tracking"])
    runs = []
    for _ in range(repeat):
        clear_caches()
        c0, t0 = cpu_seconds(), time.perf_counter()
        test = read_test_set(env["lake"], "demo", env["features_version"])
        outputs = []
        for version in (2, 1):
            model = mlflow.pyfunc.load_model(f"models:/bench/{version}")
            outputs.append(
                np.concatenate(
                    [
                        np.asarray(model.predict(test.frame.iloc[i : i + 250_000]))
                        for i in range(0, len(test.frame), 250_000)
                    ]
                )
            )
        runs.append({"s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0})
    best = min(runs, key=lambda r: r["s"])
    return {**best, "all_s": [round(r["s"], 3) for r in runs], "outputs": outputs, "y": test.y}


def run_sklearn(y: np.ndarray, cand: np.ndarray, champ: np.ndarray, replicates: int = 10) -> dict:
    from sklearn import metrics as skm

    t0 = time.perf_counter()
    for p in (cand, champ):
        (
            skm.roc_auc_score(y, p),
            skm.accuracy_score(y, p >= 0.5),
            skm.log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)),
            skm.f1_score(y, p >= 0.5),
        )
    metrics_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(replicates):
        idx = rng.integers(0, len(y), len(y))
        skm.roc_auc_score(y[idx], cand[idx]) - skm.roc_auc_score(y[idx], champ[idx])
    per_replicate = (time.perf_counter() - t0) / replicates
    return {
        "metrics_s": metrics_s,
        "bootstrap_replicate_s": per_replicate,
        "bootstrap_1000_s_extrapolated": 1000 * per_replicate,
    }


def run_latency(env: dict, promotions: int) -> dict:
    """Alternate two versions through promote(); every move allowed (lateral), infra validation off."""
    from loopline.packaging.registry import registry_client
    from loopline.release import promote

    cfg = env["cfg"].model_copy(
        update={
            "evaluation": env["cfg"].evaluation.model_copy(
                update={"min_improvement": -1.0, "max_slice_regression": None, "bootstrap_samples": 10}
            )
        }
    )
    client = registry_client(env["tracking"])
    for alias in ("champion", "previous"):
        try:
            client.delete_registered_model_alias("bench", alias)
        except Exception:
            pass
    for key in [k for k in client.get_registered_model("bench").tags if k.startswith("loopline.history.")]:
        client.delete_registered_model_tag("bench", key)
    moves, totals = [], []
    for i in range(promotions):
        result = promote(
            cfg, "bench", 1 + i % 2, lake=env["lake"], tracking_uri=env["tracking"], infra_validate=False
        )
        assert result["promoted"], result["reason"]
        moves.append(result["timings_s"]["decision_to_alias_moved"])
        totals.append(result["timings_s"]["total"])
    bare = []
    for i in range(promotions):
        t0 = time.perf_counter()
        client.set_registered_model_alias("bench", "bench-limit", str(1 + i % 2))
        bare.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    full = promote(
        env["cfg"], "bench", 2, lake=env["lake"], tracking_uri=env["tracking"]
    )  # with infra validation
    return {
        "decision_to_alias_ms_median": 1000 * statistics.median(moves),
        "decision_to_alias_ms_p95": 1000 * sorted(moves)[max(0, int(0.95 * len(moves)) - 1)],
        "bare_set_alias_ms_median": 1000 * statistics.median(bare),
        "promote_total_s_median_no_infra": statistics.median(totals),
        "promote_with_infra_validation_s": time.perf_counter() - t0,
        "infra_validation_s": full["infra_validation"].get("seconds"),
        "promotions": promotions,
    }


def run_full_promote(env: dict, repeat: int) -> dict:
    """promote(v2 over champion v1) with infra validation, cold caches; the first with a cold template."""
    import loopline.release.promotion as promotion
    from loopline.packaging.registry import registry_client
    from loopline.release.infra_template import template_for
    from loopline.release.scoring import clear_caches

    client = registry_client(env["tracking"])
    template_for().close()
    runs = []
    for _ in range(repeat + 1):
        client.set_registered_model_alias("bench", "champion", "1")
        try:
            client.delete_registered_model_alias("bench", "previous")
        except Exception:
            pass
        clear_caches()
        promotion._infra_passed.clear()
        c0, t0 = cpu_seconds(), time.perf_counter()
        result = promotion.promote(env["cfg"], "bench", 2, lake=env["lake"], tracking_uri=env["tracking"])
        wall = time.perf_counter() - t0
        assert result["promoted"] and result["infra_validation"]["ok"], result["reason"]
        runs.append(
            {
                "s": wall,
                "cpu_s": cpu_seconds() - c0,
                "parts_s": result["timings_s"],
                "infra": {k: v for k, v in result["infra_validation"].items() if k != "reason"},
                "ci_method": result["ci"]["method"],
            }
        )
    best = min(runs[1:], key=lambda r: r["s"])
    return {**best, "first_s": runs[0]["s"], "first": runs[0], "all_s": [round(r["s"], 3) for r in runs]}


def run_size(test_rows: int, args) -> dict:
    home = Path(args.home or "/tmp/loopline-bench-promotion") / f"t{test_rows}"
    env = prepare(home, test_rows)
    load_before = os.getloadavg()[0]
    ours = run_ours(env, args.repeat)
    limit = run_limit(env, args.repeat)
    full = run_full_promote(env, args.repeat)
    reference = run_sklearn(limit.pop("y"), *[o.astype(np.float64) for o in limit.pop("outputs")])
    latency = run_latency(env, args.promotions)
    return {
        "env": env,
        "ours": ours,
        "limit": limit,
        "full": full,
        "sklearn": reference,
        "latency": latency,
        "promote_vs_limit": {
            "test_rows": ours["rows"],
            "ours_s": round(full["s"], 3),
            "limit_s": round(limit["s"], 3),
            "ratio": round(full["s"] / limit["s"], 3),
            "first_promote_s": round(full["first_s"], 3),
            "first_ratio": round(full["first_s"] / limit["s"], 3),
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench promotion", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", default="20000,1000000", help="test-split sizes, comma-separated (the goal: 20k and 1M)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="cold evaluations; the best is reported")
    parser.add_argument("--promotions", type=int, default=10, help="promotions timed for latency")
    parser.add_argument(
        "--home", default=None, help="parent of the per-size LOOPLINE_HOMEs (default: a temp dir, reused)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    per_size = {size: run_size(size, args) for size in sizes}
    largest = per_size[max(sizes)]
    env, ours, limit, full = largest["env"], largest["ours"], largest["limit"], largest["full"]
    result = {
        "name": "promotion",
        "machine": machine(),
        "params": {
            "test_rows": ours["rows"],
            "dataset_rows": env["rows"],
            "sizes": sizes,
            "bootstrap_samples": env["cfg"].evaluation.bootstrap_samples,
            "slices": ours["slices"],
            "repeat": args.repeat,
            "metric": "seconds of a full promote() (gate, infra validation, evaluation with CI, alias move, "
            "model card) against the limit: read the test rows + pyfunc predict of both models",
        },
        "ours": full["s"],
        "peer": limit["s"],
        "ratio": full["s"] / limit["s"],
        "unit": "s",
        "peer_name": PEER_NAME,
        "details": {
            "promote_vs_limit": {str(size): r["promote_vs_limit"] for size, r in per_size.items()},
            "per_size": {
                str(size): {
                    "evaluate": r["ours"],
                    "limit": r["limit"],
                    "full_promote": r["full"],
                    "sklearn": r["sklearn"],
                    "latency": r["latency"],
                    "setup_s": r["env"].get("setup_s"),
                }
                for size, r in per_size.items()
            },
        },
    }
    for size, r in per_size.items():
        print_table(size, r)
    print("\nfull promote() vs the limit (read + predict both models):")
    print(f"{'test rows':>10} {'ours s':>8} {'limit s':>8} {'ratio':>6} {'first s':>8} {'load 1m':>12}")
    for r in per_size.values():
        p = r["promote_vs_limit"]
        print(
            f"{p['test_rows']:>10,} {p['ours_s']:8.2f} {p['limit_s']:8.2f} {p['ratio']:5.2f}x "
            f"{p['first_promote_s']:8.2f} {str(p['load_avg_1m']):>12}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "promotion.json"
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {out.relative_to(REPO)}")
    return result


def print_table(size: int, r: dict) -> None:
    ours, limit, sk, lat, full = r["ours"], r["limit"], r["sklearn"], r["latency"], r["full"]
    parts = ours["parts_s"]
    print(f"\nbench/promotion  {ours['rows']:,} test rows, 2 models  on {machine()}\n")
    print(f"{'':44} {'wall s':>8} {'cpu s':>8}")
    print(f"{'ours: evaluate_versions (all included)':44} {ours['s']:8.2f} {ours['cpu_s']:8.2f}")
    print(f"{'  read raw test rows':44} {parts['read']:8.2f}")
    print(f"{'  score both models':44} {parts['score']:8.2f}")
    print(f"{'  metrics + slices + bootstrap CI (1000)':44} {parts['metrics']:8.2f}")
    print(f"{'limit: read + pyfunc predict both':44} {limit['s']:8.2f} {limit['cpu_s']:8.2f}")
    print(f"{'sklearn metrics, both models':44} {sk['metrics_s']:8.2f}")
    print(f"{'naive bootstrap x1000 (extrapolated)':44} {sk['bootstrap_1000_s_extrapolated']:8.1f}")
    print(f"{'full promote() (warm template, best)':44} {full['s']:8.2f} {full['cpu_s']:8.2f}")
    print(f"{'full promote() (first: template starts)':44} {full['first_s']:8.2f}")
    for part, seconds in full["parts_s"].items():
        print(f"{'  ' + part:44} {seconds if seconds is not None else float('nan'):8.3f}")
    print(
        f"\nevaluate / limit = {ours['s'] / limit['s']:.2f}x, full promote / limit = {full['s'] / limit['s']:.2f}x"
    )
    ci = ours["ci"]
    print(
        f"CI of roc_auc candidate - champion: {ci['estimate']:+.4f} [{ci['low']:+.4f}, {ci['high']:+.4f}] ({ci['method']})"
    )
    print(
        f"\npromotion latency, decision -> alias moved (check-and-set + history): median {lat['decision_to_alias_ms_median']:.0f} ms, "
        f"p95 {lat['decision_to_alias_ms_p95']:.0f} ms over {lat['promotions']}; bare set_registered_model_alias "
        f"{lat['bare_set_alias_ms_median']:.0f} ms"
    )
    print(
        f"promote() with infra validation (warm caches): {lat['promote_with_infra_validation_s']:.1f} s "
        f"(infra validation {lat['infra_validation_s']} s)"
    )


if __name__ == "__main__":
    main()
