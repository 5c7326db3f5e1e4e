"""The whole suite runs with mmjax's runtime shape checks on (``mmjax.types.shape_checked``).

Set before anything imports mmjax: the switch is read once, at import. Subprocess
workers (tests/sharding) inherit it from the environment.

The built CPU kernels go to a directory of this run (the tests never write into the
user's caches). The persistent compilation cache is off in this process and on, in a
directory of this run, in the worker processes tests start (``MMJAX_WORKER_COMPILATION_CACHE``:
the sharding and server workers load what an earlier worker compiled). Off here because
this one process compiles and reloads hundreds of programs, and twice in three full runs
(2026-12-07, CI and a clean clone here) it died of a segmentation fault inside JAX's
``compilation_cache.put_executable_and_time`` (``executable.serialize()``) while storing a
step program of the Qwen3-VL bfloat16 test; the third run passed, and that test passes
alone with an empty cache. Not understood yet: see the issue notes.

The store of traced programs (``mmjax.engine.program_store``) is off too: each program's first trace
would also be exported, for hits this one process rarely has (its programs stay jitted in memory);
``tests/engine/test_program_store.py`` turns it on, in directories of its own.
"""

import os
import tempfile

os.environ.setdefault("MMJAX_SHAPE_CHECKS", "1")
os.environ.setdefault("MMJAX_WORKER_COMPILATION_CACHE", tempfile.mkdtemp(prefix="mmjax-test-xla-cache-"))
os.environ.setdefault("MMJAX_COMPILATION_CACHE", "0")
os.environ.setdefault("MMJAX_PROGRAM_CACHE", "0")  # tests/engine/test_program_store.py turns it on
os.environ.setdefault("MMJAX_KERNEL_CACHE", tempfile.mkdtemp(prefix="mmjax-test-kernels-"))
