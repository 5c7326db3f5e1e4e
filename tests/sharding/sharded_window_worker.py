"""Run in a subprocess with 8 CPU devices (XLA_FLAGS set by the caller before jax starts).

``PagedAttend(mesh=...)`` with a layer's sliding window and image spans in the metadata, per replica
and per KV head under ``shard_map``, against the same step on one device, replica by replica. Prints
``RESULTS {json}``: the largest differences, per mesh and impl.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mmjax.attention import PagedAttend, write_and_attend
from mmjax.kv_cache import KVPages, build_attention_metadata
from mmjax.sharding.axes import AXES

NUM_KV_HEADS, GROUP, HEAD_DIM, PAGE_SIZE, PAGES_PER_REPLICA, REPLICAS, WINDOW = 2, 4, 16, 16, 8, 2, 5


def replica_metadata(rng: np.random.Generator):
    """A chunk of 12 tokens (from position 28) holding an image span, and a decode; local page ids."""
    pool = rng.permutation(np.arange(1, PAGES_PER_REPLICA))
    tables = [pool[:3].tolist(), pool[3:5].tolist()]
    return build_attention_metadata(tables, [40, 25], [12, 1], page_size=PAGE_SIZE,
                                    bidirectional_spans=[[(30, 38)], []])


def main() -> None:
    rng = np.random.default_rng(0)
    per_replica = [replica_metadata(rng) for _ in range(REPLICAS)]
    metadata = jax.tree.map(lambda *x: np.stack(x), *per_replica)
    num_tokens = per_replica[0].num_tokens
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)  # noqa: E731
    q = normal(REPLICAS, num_tokens, NUM_KV_HEADS * GROUP, HEAD_DIM)
    k, v = (normal(REPLICAS, num_tokens, NUM_KV_HEADS, HEAD_DIM) for _ in range(2))
    shape = (NUM_KV_HEADS, REPLICAS * PAGES_PER_REPLICA, PAGE_SIZE, HEAD_DIM)
    pages = KVPages(normal(*shape), normal(*shape))  # earlier tokens' K/V, and garbage
    results = {"num_devices": jax.device_count()}
    for impl in ("auto", "xla"):
        want, unwindowed = [], []
        for r, md in enumerate(per_replica):
            own = KVPages(*(x[:, r * PAGES_PER_REPLICA : (r + 1) * PAGES_PER_REPLICA] for x in (pages.k, pages.v)))
            want.append(np.asarray(write_and_attend(q[r], k[r], v[r], own, md, sliding_window=WINDOW, impl=impl)[0]))
            unwindowed.append(np.asarray(write_and_attend(q[r], k[r], v[r], own, md, impl=impl)[0]))
        want = np.stack(want)
        results[f"window_changes_the_output_{impl}"] = float(np.max(np.abs(want - np.stack(unwindowed))))
        for model in (2, 4):  # 2 KV heads over 2 devices: split; over 4: replicated
            mesh = Mesh(np.array(jax.devices()[: REPLICAS * model]).reshape(REPLICAS, model), AXES)

            @jax.jit
            def step(q, k, v, pages, metadata, mesh=mesh, impl=impl):
                attend = PagedAttend(metadata, impl=impl, mesh=mesh)
                return attend(q, k, v, jnp.asarray(metadata.positions), pages, window=WINDOW)

            out, _ = step(q, k, v, pages, metadata)
            results[f"max_diff_{impl}_model{model}"] = float(np.max(np.abs(np.asarray(out) - want)))
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    main()
