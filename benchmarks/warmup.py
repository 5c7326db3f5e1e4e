"""How long ``engine.warmup()`` takes: the default path beside the plain-XLA attention path, in fresh processes.

The model is ``generate_vs_transformers.py``'s LLaVA-1.5 (text 512 wide, 8 layers; CLIP 256 wide),
with the default ``EngineConfig``. Each figure comes from a fresh process with empty compilation and
kernel caches (as on a new machine): ``mmjax.load``, then ``llm.engine().warmup()``, which compiles
every program a workload can need. The default (``impl="auto"``: the native CPU attention kernel on
CPU) runs beside ``impl="xla"``, the plain-XLA path that was the CPU default before the kernel; then
the default once more in a second process, with the caches the first one left.

    python benchmarks/warmup.py

Prints JSON: for each run, the programs compiled and the seconds of load and warm-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from generate_vs_transformers import make_checkpoint  # noqa: E402


def warm_up_here(path: str, impl: str) -> dict:
    """Load + warm-up in this (fresh) process."""
    import mmjax

    start = time.perf_counter()
    llm = mmjax.load(path)
    loaded = time.perf_counter()
    engine = llm.engine(mmjax.EngineConfig(impl=impl))
    programs = engine.warmup()
    return {"impl": impl, "programs": programs, "load_s": round(loaded - start, 2),
            "engine_and_warmup_s": round(time.perf_counter() - loaded, 2)}


def in_fresh_process(path: str, impl: str, caches: dict[str, str]) -> dict:
    command = [sys.executable, __file__, "--child", path, impl]
    out = subprocess.run(command, env={**os.environ, **caches}, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def new_caches() -> dict[str, str]:
    return {"MMJAX_COMPILATION_CACHE": tempfile.mkdtemp(prefix="mmjax-warmup-xla-"),
            "MMJAX_KERNEL_CACHE": tempfile.mkdtemp(prefix="mmjax-warmup-kernels-")}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(warm_up_here(sys.argv[2], sys.argv[3])))
        return
    path = make_checkpoint(tempfile.mkdtemp(prefix="mmjax-warmup-"))
    default_caches = new_caches()
    default = in_fresh_process(path, "auto", default_caches)
    xla = in_fresh_process(path, "xla", new_caches())
    second = in_fresh_process(path, "auto", default_caches)
    print(json.dumps({
        "default_first_process": default,
        "xla_path_first_process": xla,
        "default_second_process": second,
        "default_over_xla_path": round(default["engine_and_warmup_s"] / xla["engine_and_warmup_s"], 3),
        "second_over_first": round(second["engine_and_warmup_s"] / default["engine_and_warmup_s"], 3),
    }, indent=1))


if __name__ == "__main__":
    main()
