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
