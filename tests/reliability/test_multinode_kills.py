"""One node of a two-node training lost at a random step, then a rerun: bit-identical to an uninterrupted run.

Two torchrun agents on 127.0.0.1 act as two nodes (tests/train_nodes.py). Every worker freezes itself at a
random step N (`LOOPLINE_KILL_AT=train.step:N`, `LOOPLINE_KILL_SIGNAL=STOP`); then one node, chosen at
random, is hit while its peer waits on it:
- `kill -9 agent`: its torchrun agent is SIGKILLed, as when a machine or pod vanishes. Its worker must die
  with it (loopline.train.worker.die_with_parent): an orphan would keep answering its peer's collectives.
  The surviving node's collective then fails, and both nodes exit with an error.
- `SIGTERM agent`: its agent gets SIGTERM, as on a spot reclaim or an eviction; the ranks agree on the stop
  at the next multiple of 10 steps, the checkpoint is written, and both nodes stop preempted (every round
  in the full count alternates the two).
The rerun on both nodes resumes from the last checkpoint on the shared lake and must end with the
uninterrupted run's `state_sha256`.
"""

from __future__ import annotations

import random
import signal

from loopline.train.preemption import Preempted
from tests.reliability.conftest import rounds
from tests.train_nodes import (
    CHECKPOINT_EVERY,
    ENV,
    MAX_STEPS,
    has_pending,
    is_gone,
    is_stopped,
    node_processes,
    reference_sha,
    run_nodes,
    wait_until,
    write_arrays,
)

FAULTS = ("kill -9 agent", "SIGTERM agent")


def hit_one_node(fault: str, target: int, step: int):
    """`during` for run_nodes: once every rank is frozen at `step`, hit node `target`'s agent, resume."""

    def during() -> None:
        nodes = node_processes()
        assert set(nodes) == {0, 1}, nodes
        wait_until(lambda: all(is_stopped(n["worker"]) for n in nodes.values()), f"both ranks at step {step}")
        hit, other = nodes[target], nodes[1 - target]
        if fault == "kill -9 agent":
            hit["agent"].kill()
            wait_until(
                lambda: is_gone(hit["worker"]), "the killed agent's worker to die with it", timeout_s=15
            )
        else:
            hit["agent"].send_signal(signal.SIGTERM)
            wait_until(lambda: has_pending(hit["worker"], signal.SIGTERM), "the agent passing SIGTERM on")
            hit["worker"].resume()
        other["worker"].resume()

    return during


def test_one_node_lost_at_a_random_step_then_rerun_is_bit_identical(
    tmp_path, monkeypatch, reliability_report
):
    reference = reference_sha()
    arrays = write_arrays(tmp_path / "arrays")
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    tries = rounds(1, 10)
    rng = random.Random()
    lost = doubled = 0
    notes = []
    for i in range(tries):
        fault = FAULTS[i % 2]
        step = rng.choice([n for n in range(11, MAX_STEPS - 10) if n % CHECKPOINT_EVERY])
        target = rng.choice([0, 1])
        lake = tmp_path / f"lake-{i}"
        monkeypatch.setenv("LOOPLINE_KILL_AT", f"train.step:{step}")
        monkeypatch.setenv("LOOPLINE_KILL_SIGNAL", "STOP")
        hit = run_nodes(arrays, lake, during=hit_one_node(fault, target, step))
        monkeypatch.delenv("LOOPLINE_KILL_AT")
        assert all(isinstance(outcome, BaseException) for outcome in hit), f"{fault} at {step}: {hit!r}"
        if fault == "SIGTERM agent":
            stop = -(-step // CHECKPOINT_EVERY) * CHECKPOINT_EVERY
            assert all(isinstance(o, Preempted) and o.step == stop for o in hit), hit

        rerun = run_nodes(arrays, lake)
        assert all(isinstance(r, dict) for r in rerun), rerun
        resumed = rerun[0]["resumed_from_step"]
        # the last checkpoint before the hit (or the one before it, if rank 0's background write was in flight)
        assert resumed <= step + CHECKPOINT_EVERY and resumed % CHECKPOINT_EVERY == 0, (fault, step, resumed)
        lost += sum(r["state_sha256"] != reference for r in rerun)
        doubled += sum(r["steps"] != MAX_STEPS for r in rerun)
        notes.append(f"{fault} node {target} at step {step} -> resumed {resumed}")
    reliability_report.add(
        "one node of two lost mid-training (kill -9 / SIGTERM to its torchrun agent), then rerun",
        tries,
        lost=lost,
        doubled=doubled,
        note=f"state_sha256 mismatches {lost}/{2 * tries} node results; " + "; ".join(notes),
    )
    assert (lost, doubled) == (0, 0)
