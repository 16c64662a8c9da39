"""bench/training: our training loop's throughput against a plain torch loop, and checkpoint cost by size.

1. Loop overhead. The same model (an MLP), the same tensors (the demo dataset's features), the same
   optimizer and schedule: ours is `loopline.train.loop.train_loop` with checkpoints to a real lake
   folder (defaults: every 50 steps, atomic, background writer), metrics to a real MLflow run (SQLite,
   background logger) and the preemption watch on; the peer ("the limit") is a plain loop: randperm
   batches, forward, loss, backward, step, nothing else. Runs alternate ours/peer and the medians are
   compared: goal overhead <= 5%.
2. Checkpoints by model size (1M, 10M, 100M parameters, weights + AdamW state): ours (snapshot,
   torch.save, temp file + fsync + rename; load with weights_only=True) against plain torch.save/torch.load
   to a path, plus the time the training loop actually waits (the snapshot; the write is in the background).

    python -m bench training [--steps 1500] [--repeats 5] [--rows 50000] [--hidden 256,128] [--batch 512]
                             [--sizes 1e6,1e7,1e8] [--threads 1] [--device auto]

On a CUDA machine --device cuda runs the GPU path (bf16 autocast with precision auto; NVML sampler).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PEER_NAME = "plain torch loop (same model, tensors, AdamW + schedule; no logging, no checkpoints)"


def load_features(rows: int, home: Path):
    """The demo dataset's features through the real pipeline (clean -> features/D), read back as tensors."""
    from loopline.storage.lake import Lake
    from loopline.train.inputs import load_training_inputs
    from loopline.train.sample_data import demo_features

    lake = Lake(root=str(home / "lake"))
    demo_features(lake, rows)
    return lake, load_training_inputs(lake, "demo")


def plain_loop(cfg, X, y, device, autocast_dtype) -> dict[str, float]:
    """The limit: the same math with nothing around it. Returns wall and CPU seconds and samples."""
    import torch

    wall0, cpu0 = time.perf_counter(), time.process_time()

    from loopline.packaging.factory import resolve_factory
    from loopline.train.loop import make_lr_lambda

    torch.manual_seed(cfg.seed)
    model = resolve_factory(cfg.model)(X.shape[1], 1, cfg).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda" or None
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, make_lr_lambda(cfg.scheduler, cfg.max_steps, cfg.warmup_steps)
    )
    Xd, yd = X.to(device), y.to(device)
    n = len(Xd)
    steps_per_epoch = -(-n // cfg.batch_size)
    perm = None
    samples = 0
    for step in range(cfg.max_steps):
        epoch, b = divmod(step, steps_per_epoch)
        if b == 0:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch)).to(device)
        idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        xb, yb = Xd[idx], yd[idx]
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(xb)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.squeeze(-1).float(), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        samples += idx.numel()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0, "samples": samples}


def our_loop(
    cfg, data, device, lake, tracking_uri: str, experiment_id: str, run_index: int
) -> dict[str, Any]:
    """Ours with everything on: checkpoints in the lake, metrics to MLflow, the preemption watch."""
    from mlflow import MlflowClient

    from loopline.train.checkpoint import CheckpointStore
    from loopline.train.loop import train_loop
    from loopline.train.preemption import PreemptionWatch
    from loopline.train.tracking import MlflowMetricLogger

    client = MlflowClient(tracking_uri)
    run = client.create_run(experiment_id, run_name=f"bench-{run_index}")
    prefix = lake.uri("checkpoints", "bench", f"run-{run_index}-{time.time_ns()}")
    # timed like the plain loop: the whole call, setup and the final (synchronous) checkpoint included
    wall0, cpu0 = time.perf_counter(), time.process_time()
    store = CheckpointStore(lake, prefix, cfg.keep_last_checkpoints)
    logger = MlflowMetricLogger(tracking_uri, run.info.run_id)
    try:
        with PreemptionWatch(handle_sigterm=True) as watch:
            result = train_loop(cfg, data, store=store, device=device, watch=watch, on_metrics=logger.log)
    finally:
        logger.close()  # every metric is in MLflow before the clock stops
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    client.set_terminated(run.info.run_id)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "samples": result.steps * cfg.batch_size,
        "checkpoints": result.checkpoint_writes,
        "metrics_sent": logger.sent,
    }


def bench_loop(args, home: Path) -> dict[str, Any]:
    import mlflow
    import torch
    from mlflow import MlflowClient

    from loopline.config import TrainingConfig
    from loopline.train.loop import TrainingData, resolve_device, resolve_precision

    lake, inputs = load_features(args.rows, home)
    device = resolve_device(args.device)
    cfg = TrainingConfig(
        max_steps=args.steps,
        batch_size=args.batch,
        hidden_sizes=[int(h) for h in args.hidden.split(",")],
        eval_every_steps=10**9,  # evaluation is work, not overhead: off in both loops
        seed=0,
        device=args.device,
    )
    # no validation split: the comparison is about the loop's overhead (logging, checkpoints, checks)
    data = TrainingData(inputs.data.X_train, inputs.data.y_train, "binary")
    X = torch.from_numpy(data.X_train)
    y = torch.from_numpy(data.y_train.astype(np.float32))
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment(
        "bench-training", artifact_location=(home / "artifacts").as_uri()
    )
    autocast_dtype = resolve_precision(cfg.precision, device)

    ours, peer = [], []
    # warm-up (allocator, kernels, first MLflow writes) for both, not timed
    warm = cfg.model_copy(update={"max_steps": min(200, args.steps)})
    plain_loop(warm, X, y, device, autocast_dtype)
    our_loop(warm, data, device, lake, tracking_uri, experiment_id, -1)
    for i in range(args.repeats):
        for kind in ("ours", "peer") if i % 2 == 0 else ("peer", "ours"):  # alternate: load drift hits both
            if kind == "ours":
                ours.append(our_loop(cfg, data, device, lake, tracking_uri, experiment_id, i))
            else:
                peer.append(plain_loop(cfg, X, y, device, autocast_dtype))
        print(
            f"  repeat {i + 1}/{args.repeats}: ours {ours[-1]['samples'] / ours[-1]['wall_s']:,.0f} samples/s "
            f"({ours[-1]['cpu_s']:.2f} s CPU), plain {peer[-1]['samples'] / peer[-1]['wall_s']:,.0f} samples/s "
            f"({peer[-1]['cpu_s']:.2f} s CPU)",
            flush=True,
        )
    params = sum(
        p.numel()
        for p in __import__("loopline.train.models", fromlist=["mlp"]).mlp(X.shape[1], 1, cfg).parameters()
    )
    ours_rate = [r["samples"] / r["wall_s"] for r in ours]
    peer_rate = [r["samples"] / r["wall_s"] for r in peer]
    return {
        "ours_median": statistics.median(ours_rate),
        "peer_median": statistics.median(peer_rate),
        # CPU seconds per run: what the work costs, little affected by other processes on a shared machine
        "ours_cpu_s_median": statistics.median(r["cpu_s"] for r in ours),
        "peer_cpu_s_median": statistics.median(r["cpu_s"] for r in peer),
        "ours_all": ours_rate,
        "peer_all": peer_rate,
        "ours_runs": ours,
        "peer_runs": peer,
        "checkpoints_per_run": ours[-1]["checkpoints"],
        "metrics_per_run": ours[-1]["metrics_sent"],
        "model_params": params,
        "train_rows": int(len(X)),
        "features": int(X.shape[1]),
        "device": str(device),
        "precision": "bf16" if autocast_dtype is not None else "fp32",
    }


def checkpoint_state(params_target: float):
    """An MLP with about `params_target` parameters plus its AdamW state after one step."""
    import torch

    width = 1024
    depth = max(1, round(params_target / (width * width + width)))
    if params_target < width * width:
        width = int((params_target / 2) ** 0.5)
        depth = 2
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(depth)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, width)).sum().backward()
    optimizer.step()
    n = sum(p.numel() for p in model.parameters())
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": 1,
        "rng": {"torch": torch.get_rng_state()},
    }, n


def bench_checkpoints(sizes: list[float], home: Path, repeats: int) -> list[dict[str, Any]]:
    import torch

    from loopline.storage.lake import Lake
    from loopline.train.async_writer import snapshot
    from loopline.train.checkpoint import CheckpointStore

    lake = Lake(root=str(home / "ckpt-lake"))
    rows = []
    for target in sizes:
        state, n = checkpoint_state(target)
        store = CheckpointStore(lake, lake.uri("checkpoints", "bench", f"size-{n}"), keep_last=1)
        plain_path = home / f"plain-{n}.pt"
        t_snap, t_write, t_load, t_pwrite, t_pload, t_psync, size = [], [], [], [], [], [], 0
        for r in range(repeats):
            t0 = time.perf_counter()
            copy = snapshot(state)  # what the training loop waits for
            t1 = time.perf_counter()
            uri = store.save({**copy, "step": r + 1})
            t2 = time.perf_counter()
            loaded = store.load(uri)
            t3 = time.perf_counter()
            del copy, loaded
            t_snap.append(t1 - t0)
            t_write.append(t2 - t1)
            t_load.append(t3 - t2)
            size = os.path.getsize(uri)
            t4 = time.perf_counter()
            torch.save(state, plain_path)
            t5 = time.perf_counter()
            torch.load(plain_path, weights_only=True)
            t6 = time.perf_counter()
            t_pwrite.append(t5 - t4)
            t_pload.append(t6 - t5)
            t7 = time.perf_counter()
            with open(plain_path, "wb") as fh:  # plain torch.save made durable: the fair peer for a write
                torch.save(state, fh)
                fh.flush()
                os.fsync(fh.fileno())
            t_psync.append(time.perf_counter() - t7)
        plain_path.unlink()
        store.clear()
        row = {
            "params": n,
            "bytes": size,
            "snapshot_s": statistics.median(t_snap),
            "write_s": statistics.median(t_write),
            "load_s": statistics.median(t_load),
            "plain_save_s": statistics.median(t_pwrite),
            "plain_load_s": statistics.median(t_pload),
            "plain_save_fsync_s": statistics.median(t_psync),
        }
        row["write_gb_per_s"] = size / row["write_s"] / 1e9
        rows.append(row)
        print(
            f"  {n / 1e6:7.1f}M params ({size / 2**20:7.1f} MiB): snapshot {row['snapshot_s'] * 1e3:8.1f} ms | "
            f"write {row['write_s'] * 1e3:8.1f} ms (torch.save {row['plain_save_s'] * 1e3:8.1f}, "
            f"+fsync {row['plain_save_fsync_s'] * 1e3:8.1f}) | "
            f"load {row['load_s'] * 1e3:8.1f} ms (plain {row['plain_load_s'] * 1e3:8.1f})",
            flush=True,
        )
        del state
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench training", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--hidden", default="256,128")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--sizes", default="1e6,1e7,1e8")
    parser.add_argument("--checkpoint-repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads on CPU (0: torch's default)"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", default=str(RESULTS / "training.json"))
    args = parser.parse_args(argv)

    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    import logging

    logging.basicConfig(level=logging.WARNING)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="loopline-bench-training-") as tmp:
        home = Path(tmp)
        print(f"loop: {args.steps} steps x {args.repeats} repeats, batch {args.batch}, MLP {args.hidden}")
        loop = bench_loop(args, home)
        print("checkpoints (weights + AdamW state):")
        sizes = [float(s) for s in args.sizes.split(",") if s]
        checkpoints = bench_checkpoints(sizes, home, args.checkpoint_repeats)

    ratio = loop["ours_median"] / loop["peer_median"]
    cpu_ratio = loop["peer_cpu_s_median"] / loop["ours_cpu_s_median"]
    result = {
        "name": "training",
        "machine": machine(),
        "params": {
            "steps": args.steps,
            "repeats": args.repeats,
            "rows": args.rows,
            "batch_size": args.batch,
            "hidden_sizes": args.hidden,
            "torch_threads": torch.get_num_threads(),
            "device": loop["device"],
            "precision": loop["precision"],
            "metric": "training samples/s, wall clock, median of alternating runs (ratio_cpu: the same from CPU seconds); checkpoints every 50 steps, metrics every 20",
        },
        "ours": loop["ours_median"],
        "peer": loop["peer_median"],
        "ratio": ratio,
        "unit": "samples/s",
        "peer_name": PEER_NAME,
        "ratio_cpu": cpu_ratio,
        "details": {
            "loop": loop,
            "overhead_percent": (1 - ratio) * 100,
            "overhead_percent_cpu": (1 / cpu_ratio - 1) * 100,
            "checkpoints": checkpoints,
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    print()
    print("| what | ours | plain torch | ratio |")
    print("|---|---|---|---|")
    what = f"{loop['device']}, {loop['precision']}, {loop['model_params']:,} params"
    print(
        f"| samples/s, wall clock ({what}) | {loop['ours_median']:,.0f} | {loop['peer_median']:,.0f} | {ratio:.3f} |"
    )
    print(
        f"| CPU s per run of {args.steps} steps | {loop['ours_cpu_s_median']:.2f} | {loop['peer_cpu_s_median']:.2f} | "
        f"{cpu_ratio:.3f} (overhead {(1 / cpu_ratio - 1) * 100:+.1f}%) |"
    )
    for row in checkpoints:
        print(
            f"| checkpoint {row['params'] / 1e6:.0f}M params, {row['bytes'] / 2**20:.0f} MiB: write / load s | "
            f"{row['write_s']:.3f} / {row['load_s']:.3f} (loop waits {row['snapshot_s']:.3f}) | "
            f"{row['plain_save_s']:.3f} (+fsync {row['plain_save_fsync_s']:.3f}) / {row['plain_load_s']:.3f} | "
            f"{row['write_s'] / row['plain_save_fsync_s']:.2f} vs durable / {row['load_s'] / row['plain_load_s']:.2f} |"
        )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
