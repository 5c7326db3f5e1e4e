"""A layer's sliding window and image spans through ``PagedAttend``'s shard_map path, on 8 CPU devices in a
subprocess (this process's jax already has 1 device): each device's replica and heads equal one device's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

WORKER = os.path.join(os.path.dirname(__file__), "sharded_window_worker.py")


def test_sharded_paged_attend_with_a_window_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, WORKER], env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULTS "))
    results = json.loads(line[len("RESULTS "):])
    assert results["num_devices"] == 8
    for impl in ("auto", "xla"):
        assert results[f"window_changes_the_output_{impl}"] > 0.1, "the case must depend on the window"
        for model in (2, 4):  # KV heads split over the model axis, and replicated
            assert results[f"max_diff_{impl}_model{model}"] < 2e-5, (impl, model, results)
