"""Generic Hugging Face safetensors -> NNX weight loading.

An architecture declares a table (see ``llava_weights.py``): module paths in
the checkpoint, module paths in our model, and the kind of module. Loading is
then generic: build the model abstractly (``nnx.eval_shape``), read each
tensor lazily from its file, transform and cast it, and drop it into the
matching leaf. At most one tensor is in flight, so host memory never holds a
second copy of the model.

Every mismatch raises, naming the thing: a missing file, a truncated or
corrupt one, a missing tensor and the file it should be in, a wrong shape
(and the file holding it), tensors the model has no place for.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open

SINGLE_FILE = "model.safetensors"
#: safetensors' dtype names -> numpy's (those whose integer kind matters here; floats are cast anyway).
_SAFETENSORS_DTYPES = {"I8": "int8", "U8": "uint8", "I32": "int32", "I64": "int64", "F64": "float64",
                       "F32": "float32", "F16": "float16", "BF16": "float32"}
INDEX_FILE = "model.safetensors.index.json"

#: (HF parameter suffix, our leaf name, axis permutation from HF to ours).
LeafRule = tuple[str, str, tuple[int, ...] | None]

# torch's Linear stores (out, in); flax's kernel is (in, out).
# A quantized layer (``mmjax.models.common.linear``) adds its per-output-column scales as ``weight_scale [out]``.
LINEAR: tuple[LeafRule, ...] = (("weight", "kernel", (1, 0)), ("bias", "bias", None),
                                ("weight_scale", "kernel_scale", None))
LAYER_NORM: tuple[LeafRule, ...] = (("weight", "scale", None), ("bias", "bias", None))
EMBEDDING: tuple[LeafRule, ...] = (("weight", "embedding", None),)
RMS_NORM: tuple[LeafRule, ...] = (("weight", "weight", None),)
# torch's Conv2d kernel is OIHW; flax's nnx.Conv wants HWIO.
CONV2D: tuple[LeafRule, ...] = (("weight", "kernel", (2, 3, 1, 0)),)
# torch's Conv3d kernel is (out, in, t, Y, X); flax's nnx.Conv wants (t, Y, X, in, out); a bias where the model has one.
CONV3D: tuple[LeafRule, ...] = (("weight", "kernel", (2, 3, 4, 1, 0)), ("bias", "bias", None))
PARAM: tuple[LeafRule, ...] = (("", "", None),)
_OPTIONAL_LEAVES = ("bias", "kernel_scale")  # present only when the config (or the quantization) enables them
SCALE_LEAF = "kernel_scale"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one checkpoint tensor goes in our model."""

    path: tuple[str | int, ...]
    permutation: tuple[int, ...] | None


def expand_table(
    table: Iterable[tuple[str, str, tuple[LeafRule, ...]]],
    repeats: dict[str, int],
    model_paths: set[tuple[str | int, ...]],
) -> dict[str, Target]:
    """Expand a module table into ``{hf tensor name: Target}``.

    Args:
      table: ``(hf module path, our module path, leaf rules)``; paths may hold ``{i}``.
      repeats: how many times a ``{i}`` row repeats, keyed by its hf module
        path up to ``{i}`` (e.g. ``"model.language_model.layers."``).
      model_paths: the parameter paths our model has; optional leaves (biases)
        are kept only where the model has them.
    """
    targets: dict[str, Target] = {}
    for hf_module, our_module, rules in table:
        indices = range(repeats[hf_module.split("{i}")[0]]) if "{i}" in hf_module else [None]
        for i in indices:
            for hf_leaf, our_leaf, perm in rules:
                hf_name = ".".join(p for p in (hf_module.format(i=i), hf_leaf) if p)
                parts = f"{our_module.format(i=i)}/{our_leaf}".strip("/").split("/")
                path = tuple(int(p) if p.isdigit() else p for p in parts)
                if path not in model_paths:
                    if our_leaf in _OPTIONAL_LEAVES:
                        continue
                    raise AssertionError(f"weight table maps {hf_name} to {path}, which the model lacks")
                targets[hf_name] = Target(path, perm)
    unmapped = model_paths - {t.path for t in targets.values()}
    if unmapped:
        raise AssertionError(f"weight table leaves model parameters unmapped: {sorted(map(str, unmapped))}")
    return targets


def canonical_name(name: str, aliases: Iterable[tuple[str, str]]) -> str:
    """Apply ``(regex, replacement)`` rewrites, in order, to a checkpoint tensor name."""
    for pattern, replacement in aliases:
        name = re.sub(pattern, replacement, name)
    return name


class CheckpointReader:
    """Lazy reader over a checkpoint's safetensors files (single or sharded).

    ``aliases`` are ``(regex, replacement)`` rewrites from the names a
    checkpoint may use to the one canonical spelling the weight table uses.
    """

    def __init__(self, directory: str | os.PathLike, aliases: Iterable[tuple[str, str]] = ()):
        self.directory = os.fspath(directory)
        self._aliases = tuple(aliases)
        self._files = self._tensor_files()  # raw name -> file name
        self._raw_name: dict[str, str] = {}  # canonical -> raw
        for raw in self._files:
            canonical = self.canonical(raw)
            if canonical in self._raw_name:
                raise ValueError(f"tensors {self._raw_name[canonical]!r} and {raw!r} are the same parameter")
            self._raw_name[canonical] = raw
        self._handles: dict[str, object] = {}

    def _tensor_files(self) -> dict[str, str]:
        index = os.path.join(self.directory, INDEX_FILE)
        if os.path.exists(index):
            weight_map = _read_weight_map(index)
            for file in sorted(set(weight_map.values())):
                if not os.path.exists(os.path.join(self.directory, file)):
                    raise FileNotFoundError(f"{file} is listed in {index} but does not exist")
            return weight_map
        single = os.path.join(self.directory, SINGLE_FILE)
        if not os.path.exists(single):
            raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {self.directory}")
        with open_safetensors(single) as f:
            return {name: SINGLE_FILE for name in f.keys()}

    def canonical(self, raw: str) -> str:
        return canonical_name(raw, self._aliases)

    def names(self) -> set[str]:
        """Canonical names of every tensor in the checkpoint."""
        return set(self._raw_name)

    def file_of(self, canonical: str) -> str:
        return self._files[self._raw_name[canonical]]

    def describe_missing(self, canonical: str) -> str:
        """Where a missing tensor was expected, in the checkpoint's own spelling."""
        files = sorted(set(self._files.values()))
        where = files[0] if len(files) == 1 else f"{INDEX_FILE} (shards: {', '.join(files)})"
        return f"tensor {self.spelling(canonical)!r} is missing from {where} in {self.directory}"

    def spelling(self, canonical: str) -> str:
        """The name as this checkpoint spells it (a best guess for a missing tensor)."""
        if canonical in self._raw_name:
            return self._raw_name[canonical]
        # Aliases rewrite prefixes only: borrow the rewrite of the present
        # tensor that shares the longest prefix with the missing one.
        if not self._raw_name:
            return canonical
        nearest = max(self._raw_name, key=lambda n: len(os.path.commonprefix([n, canonical])))
        raw = self._raw_name[nearest]
        suffix = len(os.path.commonprefix([raw[::-1], nearest[::-1]]))
        canon_prefix, raw_prefix = nearest[: len(nearest) - suffix], raw[: len(raw) - suffix]
        if canonical.startswith(canon_prefix):
            return raw_prefix + canonical[len(canon_prefix):]
        return canonical

    def _open(self, raw: str):
        """The file holding ``raw``, opened once (tensors come out as host arrays)."""
        file = self._files[raw]
        if file not in self._handles:
            self._handles[file] = open_safetensors(os.path.join(self.directory, file))
        handle = self._handles[file]
        if raw not in handle.keys():
            raise KeyError(f"tensor {raw!r} is listed in {INDEX_FILE} under {file}, which does not contain it")
        return handle

    def shape(self, canonical: str) -> tuple[int, ...]:
        raw = self._raw_name[canonical]
        return tuple(self._open(raw).get_slice(raw).get_shape())

    def dtype(self, canonical: str) -> np.dtype:
        """The tensor's dtype in the file (read from its header)."""
        raw = self._raw_name[canonical]
        return np.dtype(_SAFETENSORS_DTYPES.get(self._open(raw).get_slice(raw).get_dtype(), "float32"))

    def read(self, canonical: str) -> np.ndarray:
        """The whole tensor, as a host array in the checkpoint's layout."""
        raw = self._raw_name[canonical]
        return self._open(raw).get_tensor(raw)

    def read_slice(self, canonical: str, index: tuple[slice, ...], permutation: tuple[int, ...] | None) -> np.ndarray:
        """One block of a tensor, as a host array in our layout: ``index`` is in our axes,
        ``permutation`` maps the checkpoint's axes to ours. Only the block is read from disk."""
        raw = self._raw_name[canonical]
        perm = permutation or tuple(range(len(index)))
        hf_index = [slice(None)] * len(index)
        for ours, theirs in enumerate(perm):
            hf_index[theirs] = index[ours]
        block = self._open(raw).get_slice(raw)[tuple(hf_index)]
        return np.transpose(block, perm) if permutation is not None else block

    def close(self) -> None:
        self._handles.clear()  # safe_open handles close when released

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_weight_map(index: str) -> dict[str, str]:
    """``{tensor name: shard file}`` of a ``model.safetensors.index.json``, or raise naming what is wrong."""
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{index} is not valid JSON (truncated or hand-edited?): {err}") from err
    except AttributeError:  # valid JSON, but not an object
        weight_map = None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index} has no \"weight_map\" object of tensor name -> shard file name")
    return weight_map


def open_safetensors(file: str):
    """``safe_open(file)`` (tensors as numpy arrays), or a ``ValueError`` naming the file and saying how it is broken.

    safetensors checks at open that the header parses and that its tensors'
    byte ranges lie inside the file, so truncation anywhere is caught here.
    """
    try:
        return safe_open(file, framework="numpy")
    except SafetensorError as err:
        raise ValueError(f"{file} {describe_broken_safetensors(file)} (safetensors: {err})") from err


def describe_broken_safetensors(file: str) -> str:
    """What is wrong with a safetensors file that does not open: "is truncated ...", etc."""
    size = os.path.getsize(file)
    with open(file, "rb") as f:
        head = f.read(8)
        if head.startswith(b"version "):
            return "is not a safetensors file: it looks like a git-lfs pointer (run `git lfs pull`)"
        if len(head) < 8:
            return f"is truncated: {size} bytes, less than the 8-byte header length"
        header_len = int.from_bytes(head, "little")
        if 8 + header_len > size:
            return (
                f"is truncated inside its header: the header is {header_len} bytes but the file "
                f"holds only {size - 8} after the length (a partial download, or not a safetensors file?)"
            )
        try:
            header = json.loads(f.read(header_len))
            ends = [t["data_offsets"][1] for key, t in header.items() if key != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "is corrupt: its header is not valid safetensors JSON"
    data = size - 8 - header_len
    if ends and max(ends) > data:
        return (
            f"is truncated: its header lists {max(ends)} bytes of tensor data but the file holds "
            f"only {data} (a partial download?)"
        )
    return "is corrupt"


def _permute_shape(shape: tuple[int, ...], perm: tuple[int, ...] | None) -> tuple[int, ...]:
    return shape if perm is None else tuple(shape[p] for p in perm)


def _check_names(targets: dict[str, Target], reader: CheckpointReader, ignore: Iterable[str],
                 derived: set[str]) -> None:
    present = reader.names()
    missing = sorted(set(targets) - present - derived)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise KeyError(reader.describe_missing(missing[0]) + more)
    ignored = [re.compile(p) for p in ignore]
    unexpected = sorted(n for n in present - set(targets) if not any(p.search(n) for p in ignored))
    if unexpected:
        names = [reader.spelling(n) for n in unexpected]
        raise ValueError(f"checkpoint {reader.directory} has tensors the model does not use: {names}")


def fill_state(
    abstract_model: nnx.Module,
    targets: dict[str, Target],
    reader: CheckpointReader,
    dtype: jnp.dtype,
    *,
    ignore: Iterable[str] = (),
    shardings: Mapping[tuple, jax.sharding.Sharding] | None = None,
) -> nnx.Module:
    """Load every target tensor into an ``nnx.eval_shape``-built model.

    Args:
      ignore: regexes of canonical names the checkpoint may carry that are not
        parameters (e.g. non-persistent buffers some exporters wrote anyway).
      shardings: ``{parameter path: sharding}``: each tensor is placed on the
        mesh as it is read, and this host reads only the blocks its devices hold.
    """
    graphdef, state = nnx.split(abstract_model)
    leaves = dict(nnx.to_flat_state(state))
    # int8 kernels read from float tensors are quantized as they are read; their scales come with them
    derived = {name for name, t in targets.items() if t.path[-1] == SCALE_LEAF and name not in reader.names()}
    _check_names(targets, reader, ignore, derived)
    for name, target in _in_file_order({n: t for n, t in targets.items() if n not in derived}, reader):
        leaf = leaves[target.path]
        expected = tuple(leaf.get_value().shape)
        got = _permute_shape(reader.shape(name), target.permutation)
        if got != expected:
            hf_expected = _permute_shape(expected, _inverse(target.permutation))
            raise ValueError(
                f"tensor {reader.spelling(name)!r} in {os.path.join(reader.directory, reader.file_of(name))} "
                f"has shape {reader.shape(name)}, expected {hf_expected} "
                f"(our layout {expected} at {'/'.join(map(str, target.path))})"
            )
        sharding = None if shardings is None else shardings[target.path]
        if leaf.get_value().dtype == jnp.int8 and reader.dtype(name) != np.int8:
            scale_path = target.path[:-1] + (SCALE_LEAF,)
            q, scale = _quantized(reader, name, target)
            leaf.set_value(_placed(q, sharding))
            leaves[scale_path].set_value(_placed(scale, None if shardings is None else shardings[scale_path]))
            continue
        leaf_dtype = _stored_dtype(target, leaf.get_value().dtype, dtype)
        if sharding is not None:
            leaf.set_value(_read_placed(reader, name, target, expected, sharding, leaf_dtype))
            continue
        # Transposed and cast on the host: as jax ops, every shape compiled a program of its own
        # (0.5 s of a 3 s load of the benchmark checkpoint, in every process). Put with device_put:
        # jnp.asarray of a numpy array runs a program per shape too (jax 0.10: an identity, 13 of them).
        value = reader.read(name)
        if target.permutation is not None:
            value = np.transpose(value, target.permutation)
        leaf.set_value(jax.device_put(np.ascontiguousarray(value, dtype=leaf_dtype)))
        del value  # one tensor in flight at a time
    return nnx.merge(graphdef, state)


def _stored_dtype(target: Target, leaf_dtype: np.dtype, dtype: jnp.dtype) -> np.dtype:
    """The dtype a leaf keeps: int8 kernels and their float32 scales as they are, the rest in ``dtype``."""
    if leaf_dtype == jnp.int8 or target.path[-1] == SCALE_LEAF:
        return leaf_dtype
    return dtype


def _quantized(reader: CheckpointReader, name: str, target: Target) -> tuple[np.ndarray, np.ndarray]:
    """A float linear weight read whole and quantized on the host: ``(int8 [in, out], float32 scales [out])``."""
    from mmjax.models.common.linear import quantize_int8

    value = reader.read(name)
    if target.permutation is not None:
        value = np.transpose(value, target.permutation)
    return quantize_int8(np.asarray(value, np.float32))


def _placed(value: np.ndarray, sharding) -> jax.Array:
    """A host array on the device, or split over a mesh by ``sharding``."""
    if sharding is None:
        return jax.device_put(np.ascontiguousarray(value))
    from mmjax.sharding.specs import read_sharded

    return read_sharded(value.shape, sharding, lambda index: np.ascontiguousarray(value[index]))


def _read_placed(reader: CheckpointReader, name: str, target: Target, shape: tuple[int, ...], sharding,
                 dtype: jnp.dtype) -> jax.Array:
    from mmjax.sharding.specs import read_sharded

    return read_sharded(shape, sharding, lambda index: reader.read_slice(name, index, target.permutation).astype(dtype))


def save_state(
    model: nnx.Module, targets: dict[str, Target], directory: str | os.PathLike, *, max_shard_bytes: int = 2**30
) -> None:
    """Write the model's parameters as HF-named safetensors (the inverse of ``fill_state``).

    Tensors are converted one at a time; shards hold at most ``max_shard_bytes``,
    with a ``model.safetensors.index.json`` when there is more than one.
    """
    from safetensors.numpy import save_file

    directory = os.fspath(directory)
    leaves = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, target in sorted(targets.items()):
        value = np.asarray(jax.device_get(leaves[target.path].get_value()))
        inverse = _inverse(target.permutation)
        value = np.ascontiguousarray(value if inverse is None else value.transpose(inverse))
        if shards[-1] and size + value.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = value
        size += value.nbytes
    if len(shards) == 1:
        save_file(shards[0], os.path.join(directory, SINGLE_FILE), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(directory, file), metadata={"format": "pt"})
        weight_map.update({name: file for name in shard})
    with open(os.path.join(directory, INDEX_FILE), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)


def _inverse(perm: tuple[int, ...] | None) -> tuple[int, ...] | None:
    if perm is None:
        return None
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return tuple(inverse)


def _in_file_order(targets: dict[str, Target], reader: CheckpointReader) -> Iterator[tuple[str, Target]]:
    # Finishing one shard before opening the next keeps file access sequential.
    return iter(sorted(targets.items(), key=lambda item: (reader.file_of(item[0]), item[0])))
