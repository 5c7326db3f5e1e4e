"""Builds a C++ kernel into a shared library once per machine, and keeps it in the user's cache.

The library is compiled on first use with the host's C++ compiler, against the
XLA FFI headers that ship with jaxlib (``jax.ffi.include_dir()``), for this
CPU (``-march=native``), and stored under ``$XDG_CACHE_HOME/mmjax/kernels``
(or ``~/.cache/mmjax/kernels``; ``MMJAX_KERNEL_CACHE`` names another
directory). Its file name is a hash of everything the binary depends on: the
source, the flags, the compiler's version, jaxlib's version and the CPU's
model and feature flags, so a home directory shared by different machines
keeps one build per kind of CPU and a changed source (or a header beside it) is rebuilt. A build is
written to a temporary file and renamed into place, so processes building
at once never load a half-written library.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import jax
import jaxlib

from mmjax.kernels_cpu.cpu_features import cpu_identity
from mmjax.user_cache import user_cache_dir

#: Optimisation flags; -march=native is dropped if the compiler refuses it.
OPT_FLAGS = ("-O3", "-march=native", "-fopenmp-simd")
BASE_FLAGS = ("-std=c++17", "-shared", "-fPIC")


class KernelBuildError(RuntimeError):
    """No C++ compiler, or the compiler failed; the message says which and how."""


def kernel_cache_dir() -> Path:
    setting = os.environ.get("MMJAX_KERNEL_CACHE")
    if setting:
        return Path(setting).expanduser()
    return user_cache_dir("kernels")


def find_compiler() -> list[str]:
    """The C++ compiler command: ``$CXX``, else Python's own, else c++ / g++ / clang++ on PATH."""
    for candidate in (os.environ.get("CXX"), sysconfig.get_config_var("CXX")):
        if candidate:
            command = shlex.split(candidate)
            if shutil.which(command[0]):
                return command
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return [name]
    raise KernelBuildError(
        "no C++ compiler found (set CXX, or install g++ or clang++) to build mmjax's CPU kernels")


@functools.cache
def _toolchain() -> tuple[tuple[str, ...], str]:
    """The compiler command and what decides how a kernel builds with it: the command, its version, jaxlib's
    version, the machine and the CPU. Once per process (the version is a subprocess); raises
    KernelBuildError where there is no working compiler (not cached: a later call looks again)."""
    compiler = find_compiler()
    identity = "\n".join([" ".join(compiler), _compiler_version(compiler), jaxlib.__version__, platform.machine(),
                          cpu_identity()])
    return tuple(compiler), identity


def toolchain_identity() -> str:
    """What decides whether and how a kernel builds here (``_toolchain``'s identity), or why none can."""
    try:
        return _toolchain()[1]
    except KernelBuildError as error:
        return f"no kernels: {error}"


def _compiler_version(compiler: list[str]) -> str:
    try:
        return subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise KernelBuildError(f"the C++ compiler {compiler[0]!r} does not run: {error}") from error


def _compile(compiler: list[str], flags: list[str], source: Path, target: Path) -> subprocess.CompletedProcess:
    command = [*compiler, *flags, "-I", str(source.parent), "-I", jax.ffi.include_dir(), str(source), "-o", str(target)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def build_library(source: Path, defines: dict[str, int | str]) -> Path:
    """Path of the shared library of ``source`` with ``-D`` `defines`, built now if not cached.

    Raises KernelBuildError (with the compiler's message) if it cannot be built.
    """
    compiler, toolchain = _toolchain()
    compiler = list(compiler)
    define_flags = [f"-D{name}={value}" for name, value in sorted(defines.items())]
    opt_flags = list(OPT_FLAGS)
    headers = [header.read_text() for header in sorted(source.parent.glob("*.h"))]  # what the source includes
    identity = "\n".join([source.read_text(), *headers, " ".join(define_flags + opt_flags), toolchain])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
    directory = kernel_cache_dir()
    target = directory / f"{source.stem}-{digest}.so"
    if target.exists():
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=directory, prefix=f".{source.stem}-", suffix=".so")
        os.close(handle)
    except OSError as error:
        raise KernelBuildError(
            f"cannot write the kernel cache {directory}: {error} (set MMJAX_KERNEL_CACHE)") from error
    try:
        result = _compile(compiler, [*BASE_FLAGS, *opt_flags, *define_flags], source, Path(partial))
        # A compiler that does not know this CPU says so about -march; any other error is the source's, and a
        # build without the CPU's instructions would hide it (the kernels' vector paths compiled out, 6x slower).
        if result.returncode and "-march=native" in opt_flags and "march" in result.stderr:
            opt_flags.remove("-march=native")
            result = _compile(compiler, [*BASE_FLAGS, *opt_flags, *define_flags], source, Path(partial))
        if result.returncode:
            raise KernelBuildError(f"{' '.join(compiler)} failed to build {source.name}:\n{result.stderr[-4000:]}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target
