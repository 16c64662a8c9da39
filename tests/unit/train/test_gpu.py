"""GPU telemetry: the no-GPU path, the summary arithmetic, DCGM-named exposition, GPU choice."""

from __future__ import annotations

import logging

import pytest

from loopline.train import gpu
from loopline.train.gpu import GpuSample, GpuSampler, choose_gpus, prometheus_text, summarise, visible_uuids

GIB = 2**30


def sample(
    uuid="GPU-aaa", index=0, t=0.0, util=50.0, used=10 * GIB, power=300.0, energy=None, **kw
) -> GpuSample:
    return GpuSample(
        index=index,
        uuid=uuid,
        name="NVIDIA H100 80GB HBM3",
        timestamp=t,
        memory_used_bytes=used,
        memory_total_bytes=80 * GIB,
        utilization_percent=util,
        power_watts=power,
        energy_millijoules=energy,
        temperature_celsius=40.0,
        **kw,
    )


def test_without_a_gpu_nothing_fails_and_it_says_so_once(caplog, monkeypatch):
    if gpu.nvml_unavailable_reason() is None:
        pytest.skip("this machine has a GPU")
    monkeypatch.setitem(gpu._nvml_state, "warned", False)
    with caplog.at_level(logging.INFO, logger="loopline.train.gpu"):
        assert gpu.read_samples() == []
        with GpuSampler(0.01) as sampler:
            pass
        assert gpu.read_samples() == []
    assert sampler.summary(2.0) is None
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu.apply_gpu_choice(1) == []
    assert "CUDA_VISIBLE_DEVICES" not in __import__("os").environ
    assert prometheus_text() == ""
    assert gpu.describe_device()["kind"] == "cpu"
    assert sum("no NVIDIA GPU" in r.getMessage() for r in caplog.records) == 1


def test_summary_uses_the_energy_counter_and_prices_gpu_hours():
    samples = [
        sample(t=0, util=80, used=10 * GIB, energy=0.0),
        sample(t=1800, util=100, used=30 * GIB, energy=1.8e9),  # 1.8e6 J = 0.5 kWh
        sample(uuid="GPU-bbb", index=1, t=0, util=60, used=5 * GIB, energy=0.0),
        sample(uuid="GPU-bbb", index=1, t=1800, util=40, used=6 * GIB, energy=0.0),
    ]
    s = summarise(samples, elapsed_seconds=3600, price_per_gpu_hour=2.5)
    assert s["gpus"] == 2
    assert s["mean_utilization_percent"] == pytest.approx(70.0)
    assert s["peak_memory_gib"] == pytest.approx(30.0)
    assert s["energy_kwh"] == pytest.approx(0.5)
    assert s["gpu_hours"] == pytest.approx(2.0)
    assert s["cost_usd"] == pytest.approx(5.0)


def test_summary_integrates_power_when_there_is_no_energy_counter():
    samples = [sample(t=0, power=100.0), sample(t=3600, power=300.0)]  # mean 200 W for an hour
    assert summarise(samples, 3600, 1.0)["energy_kwh"] == pytest.approx(0.2)


def test_prometheus_text_uses_dcgm_names_and_labels():
    mig = sample(uuid="MIG-123", util=None, power=None, mig_instance=3, mig_profile="1g.10gb")
    text = prometheus_text([sample(util=87.0, used=2048 * 2**20, power=250.5), mig], hostname="node1")
    assert "# TYPE DCGM_FI_DEV_GPU_UTIL gauge" in text
    assert (
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-aaa",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node1"} 87'
        in text
    )
    assert 'DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-aaa"' in text and "} 2048\n" in text
    assert "DCGM_FI_DEV_POWER_USAGE" in text and "250.5" in text
    assert 'GPU_I_ID="3",GPU_I_PROFILE="1g.10gb"' in text
    util_lines = [line for line in text.splitlines() if line.startswith("DCGM_FI_DEV_GPU_UTIL{")]
    assert len(util_lines) == 1  # a MIG instance reports no utilisation of its own


def test_choice_prefers_free_memory_then_idle_and_respects_visible_devices():
    a = sample(uuid="GPU-a", index=0, used=70 * GIB, util=0)
    b = sample(uuid="GPU-b", index=1, used=1 * GIB, util=90)
    c = sample(uuid="GPU-c", index=2, used=1 * GIB, util=10)
    assert [s.uuid for s in choose_gpus(2, [a, b, c])] == ["GPU-c", "GPU-b"]
    assert visible_uuids([a, b, c], env="2,0") == ["GPU-c", "GPU-a"]
    assert visible_uuids([a, b, c], env="GPU-b") == ["GPU-b"]
