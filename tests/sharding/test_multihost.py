"""Two processes joined by ``jax.distributed`` (2 "hosts" x 4 CPU devices) serve one sharded model.

The mesh is ``{"data": 2, "model": 4}``: each process holds one data replica
and tensor-parallel shards on its own 4 devices, as on a TPU pod slice. Both
must produce the single-device results, and the same results as each other.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import mmjax
from mmjax.testing.checkpoints import make_tiny_llava_checkpoint
from tests.sharding import multihost_worker as worker

WORKER = worker.__file__
DIMS = dict(num_heads=8, num_kv_heads=2, intermediate_size=56, vocab_size=384)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multihost")
    checkpoint = make_tiny_llava_checkpoint(str(tmp / "llava"), head_dim=8, **DIMS, seed=5)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               MMJAX_COMPILATION_CACHE=os.environ["MMJAX_WORKER_COMPILATION_CACHE"])
    port = str(_free_port())
    outs = [str(tmp / f"process{i}.npz") for i in range(2)]
    procs = [subprocess.Popen([sys.executable, WORKER, checkpoint, port, str(i), outs[i]], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    logs = []
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=480)
            logs.append(err)
    finally:
        for proc in procs:
            proc.kill()
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, "\n".join(line for line in log.splitlines() if "Gloo" not in line)[-4000:]
    return checkpoint, [dict(np.load(out)) for out in outs]


def test_two_processes_form_one_eight_device_mesh(run):
    _, results = run
    assert [int(r["process_index"]) for r in results] == [0, 1]
    for r in results:
        assert (int(r["process_count"]), int(r["device_count"]), int(r["local_device_count"])) == (2, 8, 4)
        assert int(r["local_kv_shards"]) == 4  # each process holds only its own devices' pages


def test_every_process_reads_the_single_device_logits(run):
    checkpoint, results = run
    _, want = mmjax.load(checkpoint).logits(worker.prompts()[0])
    for r in results:
        assert np.abs(r["logits"] - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_greedy_tokens_equal_single_device_and_both_replicas_worked(run):
    checkpoint, results = run
    want = [list(o.token_ids) for o in mmjax.generate(
        mmjax.load(checkpoint), worker.prompts()[:3], worker.sampling_params()[:3],
        engine_config=worker.engine_config(), use_tqdm=False)]
    for r in results:
        assert r["tokens"][:3].tolist() == want
        assert (r["tokens_per_replica"] > 0).all() and len(r["tokens_per_replica"]) == 2


def test_an_unseeded_sampled_request_gets_the_same_tokens_on_every_process(run):
    _, results = run
    first, second = (r["tokens"][3].tolist() for r in results)
    assert first == second and len(first) == 6
    first, second = (r["tokens_1x8"][1].tolist() for r in results)  # 1x8: every process samples every row
    assert first == second and len(first) == 6


def test_the_seed_an_engine_draws_is_the_same_on_every_process(run):
    _, results = run  # each process draws from its own entropy; the engine must agree on process 0's
    assert int(results[0]["drawn_seed"]) == int(results[1]["drawn_seed"])


def test_tensor_parallel_across_processes_gives_the_single_device_greedy_tokens(run):
    checkpoint, results = run
    want = mmjax.generate(mmjax.load(checkpoint), worker.prompts()[1], worker.sampling_params()[1],
                          engine_config=worker.engine_config(), use_tqdm=False)
    for r in results:
        assert r["tokens_1x8"][0].tolist() == list(want[0].token_ids)
