"""The engine's programs kept on disk traced and lowered (``jax.export``), so a new process calls them
without tracing its model again.

A program's first call with some argument shapes looks for its stored form under the user's cache
(``$XDG_CACHE_HOME/mmjax/programs``, or ``~/.cache/mmjax/programs``; ``MMJAX_PROGRAM_CACHE`` names
another directory, ``=0`` switches the store off). Found, it is deserialized and called, and XLA's
persistent cache has its executable: tracing and lowering the benchmark LLaVA's three first programs
took 0.35-0.5 s of a new process' first answer (``benchmarks/startup.py``). Not found, the program is
traced as an export, stored (once per machine and mmjax version), and that export is what this process
runs too.

A stored program is found only under a key of everything its trace depends on: mmjax's own source
files, the versions of the libraries that trace it, JAX's configuration, the ``MMJAX_*``, ``JAX_*`` and
``XLA_*`` environment, the devices, the CPU kernels' toolchain, the program's closure (the model's
graph and configuration, the state's structure, the attention implementation) and its arguments'
structure, shapes and dtypes. The native kernels a stored program calls are registered (built if
need be) before it runs; where one cannot be, the program is traced instead. Only programs on one CPU
device are stored (elsewhere start-up was not measured, and a sharded program is traced as before).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import pickle
import re
import sys
import tempfile
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax import export

from mmjax.kernels_cpu.build import toolchain_identity
from mmjax.kernels_cpu.cpu_features import cpu_identity
from mmjax.kernels_cpu.registration import register, registered_recipes, runs_here
from mmjax.user_cache import user_cache_dir

#: Bumped when the stored layout changes.
FORMAT = "mmjax-program-1"
#: Libraries whose code runs while a program is traced.
_TRACING_LIBRARIES = ("jax", "jaxlib", "flax", "numpy", "ml_dtypes", "jaxtyping", "transformers")
_ENVIRONMENT_PREFIXES = ("MMJAX_", "JAX_", "XLA_", "TPU_", "LIBTPU_")
_PACKAGE = Path(__file__).resolve().parent.parent  # mmjax/
_KERNELS_DIR = _PACKAGE / "kernels_cpu"
_log = logging.getLogger(__name__)


def program_cache_dir() -> Path | None:
    """Where stored programs live (None: switched off by ``MMJAX_PROGRAM_CACHE=0``)."""
    setting = os.environ.get("MMJAX_PROGRAM_CACHE", "")
    if setting.lower() in ("0", "false", "off", "no"):
        return None
    return Path(setting).expanduser() if setting else user_cache_dir("programs")


class StoredProgram:
    """``jax.jit(fun, ...)`` whose traced form is stored on disk and loaded by a later process.

    It is one ``jax.jit`` whose trace, for each new signature, loads the stored program and calls it (or,
    with none stored, exports ``fun``, stores it and calls that): JAX's own dispatch then runs each call,
    as fast as the plain jit's (a dispatch of our own in Python cost 40-170 us a call more, measured on a
    program of ~190 arguments).

    ``identity`` names what ``fun`` closes over (its key beside the arguments'): it must change wherever
    the trace would, and code outside mmjax and the tracing libraries is in no key, so ``storable=False``
    where ``fun`` runs such code (a model class of the user's): then it is only jitted. ``lower`` lowers
    the program a call would run. Call it as the jitted function, with arrays (or pytrees of arrays): the
    keyword arguments in ``static_argnames`` are static.
    """

    def __init__(self, fun: Callable[..., Any], *, identity: str, donate_argnums: tuple[int, ...] = (),
                 static_argnames: tuple[str, ...] = (), compiler_options: Mapping[str, str] | None = None,
                 storable: bool = True):
        self._fun = fun
        self._identity = identity
        self._storable = storable
        self._donate = donate_argnums
        options = dict(compiler_options or {}) or None
        self._options = sorted((options or {}).items())
        self._dispatch = jax.jit(self._stored_or_traced, donate_argnums=donate_argnums,
                                 static_argnames=static_argnames, compiler_options=options)
        self._static = static_argnames

    def lower(self, *args: Any, **kwargs: Any) -> jax.stages.Lowered:
        return self._dispatch.lower(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._dispatch(*args, **kwargs)

    def _stored_or_traced(self, *args: Any, **kwargs: Any) -> Any:
        """Runs while ``_dispatch`` traces a new signature: the stored program's call, else ``fun``'s trace."""
        static = {name: kwargs.pop(name) for name in self._static if name in kwargs}
        leaves, treedef = jax.tree.flatten((args, kwargs))
        avals = tuple((tuple(a.shape), a.dtype.name, a.weak_type) for a in map(jax.typeof, leaves))
        path = self._path(treedef, static, avals)
        stored = None if path is None else (self._load(path) or self._export(path, treedef, static, avals))
        if stored is None:
            return self._fun(*args, **static, **kwargs)
        exported, out_tree = stored
        return jax.tree.unflatten(out_tree, exported.call(*leaves))

    # -- the store ---------------------------------------------------------------------------

    def _path(self, treedef: Any, static: Mapping[str, Any], avals: tuple) -> Path | None:
        """Where this signature's program is stored (None: the store is off, or not for this program)."""
        directory = program_cache_dir()
        if directory is None or not self._storable or not _storable():
            return None
        text = "\n".join([FORMAT, installation_fingerprint(), settings_fingerprint(), self._identity, str(treedef),
                          repr(sorted(static.items())), repr(avals), repr(self._donate), repr(self._options)])
        return directory / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.exported"

    def _load(self, path: Path) -> tuple[export.Exported, Any] | None:
        """The program stored at ``path`` and its output structure, its kernels registered; None if there is
        none, or it cannot run here."""
        try:
            payload = pickle.loads(path.read_bytes())
            if payload["format"] != FORMAT:
                return None
            for target, (source, symbol, defines) in payload["kernels"].items():
                if register(target, _KERNELS_DIR / source, symbol, defines) is not None:
                    return None  # a kernel it calls cannot run here: trace it anew
            return export.deserialize(bytearray(payload["exported"])), payload["out_tree"]
        except FileNotFoundError:
            return None
        except Exception as error:  # noqa: BLE001 - a damaged or foreign file: trace (and store it again)
            _log.warning("cannot read the stored program %s (%s: %s); tracing it", path, type(error).__name__, error)
            return None

    def _export(self, path: Path, treedef: Any, static: Mapping[str, Any], avals: tuple
                ) -> tuple[export.Exported, Any] | None:
        """``fun`` traced for these arguments as an export and stored at ``path``; this process runs the
        program the next ones will load (and XLA's persistent cache keeps it for them). None where export
        cannot take it (the program is then traced in each process)."""
        out_trees = []

        def flat(*flat_leaves: jax.Array) -> list:
            call_args, call_kwargs = jax.tree.unflatten(treedef, flat_leaves)
            out_leaves, out_tree = jax.tree.flatten(self._fun(*call_args, **static, **call_kwargs))
            out_trees.append(out_tree)
            return out_leaves

        specs = [jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), weak_type=weak) for shape, dtype, weak in avals]
        try:
            program = jax.jit(flat)
            program.trace(*specs)  # registers the kernels it calls (the export below reuses this trace)
            recipes = registered_recipes()
            checks = [export.DisabledSafetyCheck.custom_call(target) for target in recipes]
            exported = export.export(program, platforms=(jax.default_backend(),), disabled_checks=checks)(*specs)
        except Exception as error:  # noqa: BLE001 - a program export cannot take is only jitted
            _log.warning("cannot export a program (%s: %s); it is traced in each process", type(error).__name__, error)
            return None
        called = set(re.findall(r"custom_call @([\w.]+)", exported.mlir_module()))
        kernels = {t: (recipes[t][0].name, recipes[t][1], recipes[t][2]) for t in called if t in recipes}
        try:
            _write_atomically(path, pickle.dumps({"format": FORMAT, "exported": bytes(exported.serialize()),
                                                  "out_tree": out_trees[0], "kernels": kernels}))
        except Exception as error:  # noqa: BLE001 - storing is an optimisation: it never fails a step
            _log.warning("cannot store a traced program in %s (%s: %s); it will be traced in each process",
                         path.parent, type(error).__name__, error)
        return exported, out_trees[0]


def _write_atomically(path: Path, payload: bytes) -> None:
    """``path`` holds ``payload`` whole or not at all (processes storing at once never read half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(payload)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


@cache
def _storable() -> bool:
    """Programs are stored on one CPU device only."""
    return jax.default_backend() == "cpu" and jax.device_count() == 1 and jax.process_count() == 1


@cache
def installation_fingerprint() -> str:
    """What a process cannot change: mmjax's source files, the tracing libraries' versions, Python's, the
    devices, the CPU (its features decide products: ``multiplies_bfloat16_in_tiles``) and the CPU kernels'
    toolchain (hashed once per process)."""
    digest = hashlib.sha256()
    package = _PACKAGE
    for path in sorted(p for p in package.rglob("*") if p.suffix in (".py", ".cc", ".h")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    versions = []
    for name in _TRACING_LIBRARIES:
        try:
            versions.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name}=absent")
    devices = [jax.default_backend(), jax.devices()[0].device_kind, jax.device_count(), jax.process_count()]
    for part in (versions, sys.version, devices, cpu_identity(), toolchain_identity()):
        digest.update(repr(part).encode())
    return digest.hexdigest()


def settings_fingerprint() -> str:
    """What a process may change as it runs: JAX's configuration and the ``MMJAX_*``, ``JAX_*`` and ``XLA_*``
    environment (e.g. ``MMJAX_CPU_KERNEL=0``), read at each new signature."""
    config = sorted((k, v) for k, v in jax.config.values.items() if isinstance(v, (bool, int, float, str, type(None))))
    environment = sorted((k, v) for k, v in os.environ.items()
                         if k.startswith(_ENVIRONMENT_PREFIXES) and k != "MMJAX_PROGRAM_CACHE")
    return repr((config, environment, runs_here()))
