"""Registers a native kernel with XLA once per process: build (or find on disk), load, register its handler.

Every CPU kernel goes through here, so a process builds each library once (a
caller waits for a build of the same target already under way, e.g. one
``mmjax.load`` started on a thread; different targets build at the same time)
and remembers, for each XLA target, whether it is registered or why it could not be.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Mapping
from pathlib import Path

import jax

from mmjax.kernels_cpu.build import KernelBuildError, build_library

_libraries: dict[str, ctypes.CDLL] = {}  # kept alive: XLA calls into them
_outcomes: dict[str, str | None] = {}  # target -> None (registered) or why the build failed
_recipes: dict[str, tuple[Path, str, dict[str, int | str]]] = {}  # target -> (source, symbol, defines)
_locks: dict[str, threading.Lock] = {}  # one per target
_locks_lock = threading.Lock()


def _target_lock(target: str) -> threading.Lock:
    with _locks_lock:
        return _locks.setdefault(target, threading.Lock())


def disabled() -> bool:
    """``MMJAX_CPU_KERNEL=0`` (or false/off/no) switches the CPU kernels off: plain XLA is used instead."""
    return os.environ.get("MMJAX_CPU_KERNEL", "").lower() in ("0", "false", "off", "no")


def runs_here() -> str | None:
    """None if native CPU kernels can run in this process, else why not."""
    if disabled():
        return "switched off by MMJAX_CPU_KERNEL=0"
    if jax.default_backend() != "cpu":
        return f"the default backend is {jax.default_backend()!r}, and the kernel runs on CPU only"
    return None


def register(target: str, source: Path, symbol: str, defines: Mapping[str, int | str] | None = None) -> str | None:
    """Builds `source` with `defines` (or finds it built) and registers its FFI handler `symbol` as the CPU
    target `target`, once per process. Returns None, or why it failed (the same answer every time)."""
    with _target_lock(target):
        if target not in _outcomes:
            try:
                library = ctypes.CDLL(str(build_library(source, dict(defines or {}))))
                jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
                _libraries[target] = library
                _outcomes[target] = None
                _recipes[target] = (source, symbol, dict(defines or {}))
            except (KernelBuildError, OSError, AttributeError) as error:
                _outcomes[target] = str(error)
        return _outcomes[target]


def registered_recipes() -> dict[str, tuple[Path, str, dict[str, int | str]]]:
    """Every target registered in this process and what registered it: ``(source, symbol, defines)``, as
    ``register`` takes them (a program stored with its kernels registers them again in a new process)."""
    return dict(_recipes)


def register_in_background(target: str, source: Path, symbol: str,
                           defines: Mapping[str, int | str] | None = None) -> threading.Thread | None:
    """`register` on a thread, so a first build (~3 s) overlaps other work. None if there is nothing
    to do: the kernels do not run here, or `target` was registered (or failed) already."""
    if runs_here() is not None or target in _outcomes:
        return None
    thread = threading.Thread(target=register, args=(target, source, symbol, defines), name=f"build-{target}")
    thread.start()
    return thread
