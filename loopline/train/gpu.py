"""GPU telemetry and choice through NVML (nvidia-ml-py), MIG-aware, with DCGM-named Prometheus text.

- `GpuSampler`: a background thread sampling utilisation, memory, power, temperature and energy of the
  GPUs this process may use; `summary()` gives mean utilisation, peak memory, energy (kWh), GPU-hours and
  cost at a price per GPU-hour, for MLflow and the CLI.
- `prometheus_text()`: the exposition format with the names dcgm-exporter uses (DCGM_FI_DEV_GPU_UTIL,
  DCGM_FI_DEV_FB_USED, DCGM_FI_DEV_POWER_USAGE, ...), so existing Grafana dashboards read it unchanged.
- `choose_gpus(n)`: the n GPUs (or MIG instances) with the most free memory, least busy first, and
  `apply_gpu_choice` sets CUDA_VISIBLE_DEVICES to them before CUDA starts.
Without a GPU or an NVIDIA driver every function says so once in the log and returns empty; nothing fails.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from loopline.storage.files import atomic_write_text

log = logging.getLogger(__name__)

_nvml_lock = threading.Lock()
_nvml_state: dict[str, Any] = {"initialised": False, "error": None, "warned": False}


@dataclass(frozen=True)
class GpuSample:
    """One reading of one GPU or MIG instance. Units are in the names; None: not supported there."""

    index: int  # NVML index of the physical GPU
    uuid: str  # GPU-... or MIG-...
    name: str
    timestamp: float  # time.time()
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_percent: float | None = None  # not reported per MIG instance
    memory_utilization_percent: float | None = None
    power_watts: float | None = None
    temperature_celsius: float | None = None
    energy_millijoules: float | None = None  # since the driver loaded
    sm_clock_mhz: float | None = None
    mig_instance: int | None = None  # GPU instance id when this is a MIG device
    mig_profile: str | None = None

    @property
    def memory_free_bytes(self) -> int:
        return self.memory_total_bytes - self.memory_used_bytes


def nvml_unavailable_reason() -> str | None:
    """None when NVML works and sees at least one GPU, else why not (logged once)."""
    with _nvml_lock:
        if not _nvml_state["initialised"] and _nvml_state["error"] is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                if pynvml.nvmlDeviceGetCount() == 0:
                    _nvml_state["error"] = "NVML sees no GPU"
                else:
                    _nvml_state["initialised"] = True
            except Exception as exc:  # library not found, driver not loaded, ...
                _nvml_state["error"] = f"{type(exc).__name__}: {exc}"
        reason = _nvml_state["error"]
        if reason and not _nvml_state["warned"]:
            _nvml_state["warned"] = True
            log.info("no NVIDIA GPU available (%s): GPU telemetry off, reporting CPU", reason)
        return reason


def read_samples(uuids: list[str] | None = None) -> list[GpuSample]:
    """Sample every GPU (every MIG instance of a MIG-enabled GPU), or only those whose UUID is given."""
    if nvml_unavailable_reason():
        return []
    import pynvml

    out: list[GpuSample] = []
    now = time.time()
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = _call(pynvml.nvmlDeviceGetName, handle) or "unknown"
        uuid = _call(pynvml.nvmlDeviceGetUUID, handle) or f"GPU-{index}"
        power_mw = _call(pynvml.nvmlDeviceGetPowerUsage, handle)
        temperature = _call(pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU)
        energy = _call(pynvml.nvmlDeviceGetTotalEnergyConsumption, handle)
        sm_clock = _call(pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_SM)
        shared = {
            "index": index,
            "name": name,
            "timestamp": now,
            "power_watts": power_mw / 1000.0 if power_mw is not None else None,
            "temperature_celsius": float(temperature) if temperature is not None else None,
            "energy_millijoules": float(energy) if energy is not None else None,
            "sm_clock_mhz": float(sm_clock) if sm_clock is not None else None,
        }
        mig_current = _call(pynvml.nvmlDeviceGetMigMode, handle)
        if mig_current and mig_current[0] == pynvml.NVML_DEVICE_MIG_ENABLE:
            out += _mig_samples(pynvml, handle, shared, uuids)
            continue
        if uuids and uuid not in uuids:
            continue
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        rates = _call(pynvml.nvmlDeviceGetUtilizationRates, handle)
        out.append(
            GpuSample(
                uuid=uuid,
                memory_used_bytes=int(memory.used),
                memory_total_bytes=int(memory.total),
                utilization_percent=float(rates.gpu) if rates is not None else None,
                memory_utilization_percent=float(rates.memory) if rates is not None else None,
                **shared,
            )
        )
    return out


def _mig_samples(pynvml, parent, shared: dict[str, Any], uuids: list[str] | None) -> list[GpuSample]:
    out = []
    for i in range(_call(pynvml.nvmlDeviceGetMaxMigDeviceCount, parent) or 0):
        mig = _call(pynvml.nvmlDeviceGetMigDeviceHandleByIndex, parent, i)
        if mig is None:
            continue
        uuid = _call(pynvml.nvmlDeviceGetUUID, mig) or f"MIG-{shared['index']}-{i}"
        if uuids and uuid not in uuids:
            continue
        memory = pynvml.nvmlDeviceGetMemoryInfo(mig)
        gi = _call(pynvml.nvmlDeviceGetGpuInstanceId, mig)
        # power, temperature and energy belong to the whole GPU: keep them on the first instance only,
        # so sums over instances do not count them twice
        first = not out
        out.append(
            GpuSample(
                uuid=uuid,
                memory_used_bytes=int(memory.used),
                memory_total_bytes=int(memory.total),
                mig_instance=gi,
                mig_profile=_call(pynvml.nvmlDeviceGetName, mig),
                **{
                    **shared,
                    "power_watts": shared["power_watts"] if first else None,
                    "energy_millijoules": shared["energy_millijoules"] if first else None,
                },
            )
        )
    return out


def _call(fn, *args):
    """NVML getters raise NVMLError_NotSupported on some boards and on MIG instances: read as None."""
    try:
        return fn(*args)
    except Exception:
        return None


# -- choice -------------------------------------------------------------------------------------------


def choose_gpus(count: int, samples: list[GpuSample] | None = None) -> list[GpuSample]:
    """The `count` devices with the most free memory, then the lowest utilisation (MIG instances count
    as devices). Fewer are returned when fewer exist."""
    samples = read_samples() if samples is None else samples
    ranked = sorted(samples, key=lambda s: (-s.memory_free_bytes, s.utilization_percent or 0.0, s.index))
    return ranked[:count]


def apply_gpu_choice(count: int) -> list[str]:
    """Set CUDA_VISIBLE_DEVICES to the chosen devices' UUIDs unless a scheduler already set it.
    Must run before CUDA initialises in this process (children inherit it). Returns the UUIDs used."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return visible_uuids()
    chosen = choose_gpus(count)
    if not chosen:
        return []
    uuids = [s.uuid for s in chosen]
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA numbering = NVML numbering
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(uuids)
    log.info(
        "chose GPU(s) %s by free memory and utilisation", ", ".join(f"{s.index} ({s.name})" for s in chosen)
    )
    return uuids


def visible_uuids(samples: list[GpuSample] | None = None, env: str | None = None) -> list[str]:
    """UUIDs of the devices CUDA_VISIBLE_DEVICES allows (all when unset); indices and UUID prefixes."""
    samples = read_samples() if samples is None else samples
    env = os.environ.get("CUDA_VISIBLE_DEVICES") if env is None else env
    if env is None:
        return [s.uuid for s in samples]
    chosen = []
    for token in (t.strip() for t in env.split(",") if t.strip()):
        if token.isdigit():
            chosen += [s.uuid for s in samples if s.index == int(token) and s.mig_instance is None]
        else:
            chosen += [s.uuid for s in samples if s.uuid.startswith(token)]
    return chosen


# -- sampling and summary -----------------------------------------------------------------------------


class GpuSampler:
    """Samples the visible GPUs every `interval_seconds` on a daemon thread while training runs.

    Optional `textfile`: the latest DCGM-named exposition is rewritten there atomically after every
    sample (node_exporter's textfile collector picks it up)."""

    def __init__(self, interval_seconds: float = 1.0, *, textfile: str | None = None):
        self.interval_seconds = interval_seconds
        self.textfile = textfile
        self.samples: list[GpuSample] = []
        self.latest: list[GpuSample] = []  # the newest reading of each device (for live gauges)
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._uuids: list[str] = []

    @property
    def available(self) -> bool:
        return nvml_unavailable_reason() is None

    def start(self) -> GpuSampler:
        self.started_at = time.time()
        if not self.available:
            return self
        self._uuids = visible_uuids()
        self._sample_once()
        self._thread = threading.Thread(target=self._run, name="loopline-nvml", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._sample_once()
        self.stopped_at = time.time()

    def __enter__(self) -> GpuSampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            self._sample_once()

    def _sample_once(self) -> None:
        try:
            batch = read_samples(self._uuids or None)
        except Exception as exc:  # a flaky driver must not stop training
            log.debug("NVML sample failed: %s", exc)
            return
        self.samples += batch
        if batch:
            self.latest = batch
        if self.textfile and batch:
            write_textfile(self.textfile, prometheus_text(batch))

    def summary(self, price_per_gpu_hour: float) -> dict[str, Any] | None:
        if not self.samples:
            return None
        end = self.stopped_at or time.time()
        return summarise(self.samples, (end - (self.started_at or end)), price_per_gpu_hour)


def summarise(samples: list[GpuSample], elapsed_seconds: float, price_per_gpu_hour: float) -> dict[str, Any]:
    """Mean utilisation, peak memory, energy (kWh), GPU-hours and cost over a run's samples."""
    by_device: dict[str, list[GpuSample]] = {}
    for sample in samples:
        by_device.setdefault(sample.uuid, []).append(sample)
    utils = [s.utilization_percent for s in samples if s.utilization_percent is not None]
    energy_joules = 0.0
    for series in by_device.values():
        series.sort(key=lambda s: s.timestamp)
        counters = [s.energy_millijoules for s in series if s.energy_millijoules is not None]
        if len(counters) >= 2 and counters[-1] >= counters[0]:
            energy_joules += (counters[-1] - counters[0]) / 1000.0
        else:  # no energy counter: integrate power over time (trapezoids)
            points = [(s.timestamp, s.power_watts) for s in series if s.power_watts is not None]
            energy_joules += sum(
                (t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(points, points[1:], strict=False)
            )
    n_devices = len(by_device)
    gpu_hours = n_devices * elapsed_seconds / 3600.0
    peak_per_device = {uuid: max(s.memory_used_bytes for s in series) for uuid, series in by_device.items()}
    first = samples[0]
    return {
        "gpus": n_devices,
        "names": sorted({s.name for s in samples}),
        "uuids": sorted(by_device),
        "mig": any(s.mig_instance is not None for s in samples),
        "mean_utilization_percent": sum(utils) / len(utils) if utils else None,
        "peak_memory_bytes": max(peak_per_device.values()),
        "peak_memory_gib": max(peak_per_device.values()) / 2**30,
        "memory_total_gib": first.memory_total_bytes / 2**30,
        "energy_kwh": energy_joules / 3.6e6,
        "gpu_hours": gpu_hours,
        "price_per_gpu_hour": price_per_gpu_hour,
        "cost_usd": gpu_hours * price_per_gpu_hour,
        "samples": len(samples),
        "elapsed_seconds": elapsed_seconds,
    }


# -- Prometheus exposition with dcgm-exporter names ---------------------------------------------------

# (metric, help, sample attribute, scale)
DCGM_METRICS = (
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", "utilization_percent", 1.0),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", "memory_utilization_percent", 1.0),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", "memory_used_bytes", 1 / 2**20),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", "memory_free_bytes", 1 / 2**20),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", "power_watts", 1.0),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", "temperature_celsius", 1.0),
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", "sm_clock_mhz", 1.0),
    (
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "Total energy consumption since boot (in mJ).",
        "energy_millijoules",
        1.0,
    ),
)
_COUNTERS = {"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"}


def prometheus_text(
    samples: list[GpuSample] | None = None,
    hostname: str | None = None,
    extra_labels: dict[str, str] | None = None,
) -> str:
    """The Prometheus text format for the latest samples (read now when none are given). `extra_labels`
    go on every series (a training run adds its model and run, to join them to its own gauges)."""
    samples = read_samples() if samples is None else samples
    hostname = hostname or socket.gethostname()
    lines: list[str] = []
    for metric, help_text, attr, scale in DCGM_METRICS:
        rows = [(s, getattr(s, attr)) for s in samples]
        rows = [(s, v) for s, v in rows if v is not None]
        if not rows:
            continue
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} {'counter' if metric in _COUNTERS else 'gauge'}")
        for sample, value in rows:
            labels = {
                "gpu": str(sample.index),
                "UUID": sample.uuid,
                "device": f"nvidia{sample.index}",
                "modelName": sample.name,
                "Hostname": hostname,
            }
            if sample.mig_instance is not None:
                labels["GPU_I_ID"] = str(sample.mig_instance)
                labels["GPU_I_PROFILE"] = sample.mig_profile or ""
            labels.update(extra_labels or {})
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{metric}{{{label_text}}} {_number(value * scale)}")
    return "\n".join(lines) + ("\n" if lines else "")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def write_textfile(path: str, text: str) -> None:
    atomic_write_text(path, text)


def sample_to_dict(sample: GpuSample) -> dict[str, Any]:
    return asdict(sample)


def describe_device() -> dict[str, Any]:
    """What trained: GPU names when NVML sees GPUs, else the CPU (for run tags and the CLI)."""
    samples = read_samples()
    if samples:
        return {"kind": "cuda", "gpu_name": samples[0].name, "gpus": len(samples)}
    import platform

    return {"kind": "cpu", "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
