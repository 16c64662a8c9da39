"""A Dask worker SIGKILLed in the middle of a parallel ingest (data.executor: dask): nothing is lost or doubled,
and the result is exactly the local executor's.

Each round one worker process SIGKILLs itself in the middle of its second `validate-file` task (the kill point
ingest.validate.staged: its first result is done, its attempt's staging folder half written, other files in
flight on the other worker). Rounds alternate how Dask treats the task that was running: rescheduled on the
surviving worker by Dask itself (its default), or failed at once with KilledWorker (`allowed_failures` 0), which
leaves the Prefect task run Running (prefect#21638) until the committer marks it Crashed and runs the file
again as a new task run. Completed results are taken and released at once, so nothing
is recomputed from the dead worker (prefect#15442); if it were, the attempt would stage into a folder of its
own and commit nothing. A few rounds in `make test`, more under `make reliability`.
"""

from __future__ import annotations

import os

import pytest

from loopline.config import LifecycleConfig
from tests import dask_support as dk
from tests import data_support as ds
from tests.reliability.conftest import rounds

FILES = 8


@pytest.fixture(scope="module")
def cluster(prefect_api):
    cluster, client = dk.start_cluster(2)
    yield cluster, client
    client.close()
    cluster.close()


def test_a_dask_worker_killed_mid_ingest_loses_and_doubles_nothing(cluster, reliability_report, tmp_path):
    from flows.ingest import ingest_on_dask

    scheduler, client = cluster
    contract_path = ds.write_contract(tmp_path)
    files = dk.write_folder(tmp_path / "src", FILES, awkward=False, chain=False)
    expected = [
        dk.comparable(r) for r in dk.local_reference(tmp_path / "ref", contract_path, tmp_path / "src")
    ]
    ref_lake = ds.setup(tmp_path / "ref", contract_path)[1]
    expected_rows = {kind: dk.rows(ref_lake, kind) for kind in ("raw", "clean", "quarantine")}

    tries = rounds(2, 8)
    lost = doubled = kills = 0
    for r in range(tries):
        client.wait_for_workers(2, timeout=120)
        allowed = 0 if r % 2 else 3  # odd rounds: the running task fails at once with KilledWorker
        client.run_on_scheduler(_set_allowed_failures, allowed)
        home = tmp_path / f"home{r}"
        cfg = LifecycleConfig(
            home=str(home),
            validation={"data_docs": False},
            data={
                "contract": str(contract_path),
                "executor": "dask",
                "dask_address": scheduler.scheduler_address,
            },
        )
        # one worker SIGKILLs itself in the middle of its second validation (loopline.faults kill point);
        # the nanny restarts it without the setting, so it dies once
        pids = client.run(os.getpid)
        victim = sorted(pids)[r % 2]
        client.run(dk.set_worker_env, "LOOPLINE_KILL_AT", "ingest.validate.staged:2", workers=[victim])
        try:
            got = ingest_on_dask([str(f) for f in files], cfg)
        finally:
            if victim in client.run(os.getpid):  # still alive: it was never killed; clear the setting
                client.run(dk.set_worker_env, "LOOPLINE_KILL_AT", None, workers=[victim])
        kills += pids[victim] not in client.run(os.getpid).values()
        lake = ds.setup(home, contract_path)[1]
        d, lo = dk.doubled_and_lost(lake, expected_rows)
        doubled, lost = doubled + d, lost + lo
        assert [dk.comparable(x) for x in got] == expected, f"round {r}"
        assert (d, lo) == (0, 0), f"round {r}: {d} rows doubled, {lo} lost"
    client.run_on_scheduler(_set_allowed_failures, 3)
    assert not dk.unfinished_task_runs("validate-file")  # a killed run is Crashed, never left Running
    reliability_report.add(
        "dask worker SIGKILLed mid-ingest (data.executor dask)",
        tries,
        lost=lost,
        doubled=doubled,
        note=f"{kills} of {tries} rounds killed a worker mid-validate; result = local executor's",
    )
    assert kills == tries  # every round really killed a worker while it validated a file


def _set_allowed_failures(n: int, dask_scheduler=None) -> None:
    dask_scheduler.allowed_failures = n
