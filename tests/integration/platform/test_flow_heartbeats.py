"""Flow runs keep Prefect's heartbeats but end without waiting on the heartbeat thread (flows/heartbeats.py)."""

from __future__ import annotations

import threading
import time

import httpx


def test_a_flow_run_keeps_its_heartbeats_and_ends_without_joining_their_thread(prefect_api, monkeypatch):
    from prefect import flow
    from prefect.flow_engine import FlowRunEngine

    import flows.lifecycle  # noqa: F401  (what a worker loads for the lifecycle deployment)

    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)  # Prefect's default: 180 s
    beats: list[threading.Thread] = []
    emit = FlowRunEngine._emit_flow_run_heartbeat

    def counted(self, *args, **kwargs):
        beats.append(threading.current_thread())
        return emit(self, *args, **kwargs)

    joined: list[threading.Thread] = []
    join = threading.Thread.join

    def recorded(self, timeout=None):
        joined.append(self)
        return join(self, timeout)

    monkeypatch.setattr(FlowRunEngine, "_emit_flow_run_heartbeat", counted)
    monkeypatch.setattr(threading.Thread, "join", recorded)

    @flow
    def short_run() -> int:
        time.sleep(0.3)  # long enough for the run's first heartbeat
        return 7

    state = short_run(return_state=True)
    assert state.result() == 7
    run = httpx.get(f"{prefect_api}/flow_runs/{state.state_details.flow_run_id}", timeout=30).json()
    assert run["state_type"] == "COMPLETED"  # on the session's Prefect server
    # the safety net is on: the run sent its heartbeat, from a thread of its own ...
    assert len(beats) == 1 and beats[0] is not threading.current_thread()
    heartbeat_thread = beats[0]
    # ... which the run's end did not join (Prefect's sync engine waits up to 1 s there) ...
    assert heartbeat_thread not in joined
    # ... and which stops on its own at its next one-second step, without another heartbeat
    join(heartbeat_thread, 3)
    assert not heartbeat_thread.is_alive()
    assert len(beats) == 1


def test_every_module_with_a_flow_installs_the_fix():
    from pathlib import Path

    flows_dir = Path(__file__).resolve().parents[3] / "flows"
    with_flows = [p for p in flows_dir.rglob("*.py") if "@flow" in p.read_text()]
    assert len(with_flows) >= 9
    assert [p.name for p in with_flows if "import flows.heartbeats" not in p.read_text()] == []
