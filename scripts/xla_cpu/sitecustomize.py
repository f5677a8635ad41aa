"""Imported first by every Python process of scripts/check_xla.sh (its PYTHONPATH starts with this folder).

Lightning counts XLA devices by asking the TPU metadata server (torch_xla._internal.tpu.num_available_devices), which
a machine without a TPU does not have: on PJRT_DEVICE=CPU it answers with torch_xla's own runtime device count, so
trainer=tpu runs Lightning's real XLA accelerator, strategy, precision and checkpoint IO on torch_xla's CPU device.
Nothing else is changed."""

import os

if os.environ.get("PJRT_DEVICE") == "CPU":
    try:
        import torch_xla._internal.tpu as tpu
        import torch_xla.runtime as xr

        tpu.num_available_devices = lambda: xr.global_runtime_device_count()
    except ImportError:  # not the XLA venv
        pass

# ENCDEC_XLA_METRICS=FILE: at exit, how many graphs XLA compiled and executed in this process, as JSON (tests/test_xla.py
# bounds a whole train.py run's compilations with it).
if os.environ.get("PJRT_DEVICE") == "CPU" and os.environ.get("ENCDEC_XLA_METRICS"):
    import atexit
    import json

    def _write_xla_metrics(path: str = os.environ["ENCDEC_XLA_METRICS"]) -> None:
        try:
            import torch_xla.debug.metrics as met
        except ImportError:
            return
        counts = {name: (met.metric_data(name) or [0])[0] for name in ("CompileTime", "ExecuteTime")}
        with open(path, "w", encoding="utf-8") as file:
            json.dump({"compiles": counts["CompileTime"], "executions": counts["ExecuteTime"]}, file)

    atexit.register(_write_xla_metrics)
