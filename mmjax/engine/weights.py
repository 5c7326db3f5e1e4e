"""New weights for a built model: check that they fit, and place them where the old ones are.

``LLMEngine.update_weights`` and ``LLM.update_weights`` take the parameters of another loaded
model of the same architecture and shapes (e.g. ``mmjax.train(llm, ...).llm``). The compiled
programs are bound to the model's graph and to its state's structure, shapes, dtypes and
placement; weights that keep all of those run the same programs, with nothing compiled again.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx


def checked_state(graphdef: nnx.GraphDef, state: nnx.State, source: Any, hf_config: Any = None) -> nnx.State:
    """``source``'s state, once it is known to fit the model ``graphdef, state`` (``hf_config``: that model's
    Hugging Face config, to name a differing field).

    Raises:
      TypeError: ``source`` is not a loaded model (a ``TrainResult`` is told to pass ``.llm``).
      ValueError: it is one of another architecture, parameter shape or dtype, or static configuration
        (the first difference named).
    """
    new_graphdef, new_state = source_state(source)
    check_compatible(state, new_state)
    if graphdef != new_graphdef:
        field = config_difference(hf_config, getattr(source, "hf_config", None))
        raise ValueError(f"the new weights come from a model whose static configuration differs from this one's"
                         f"{f' ({field})' if field else ''}: the compiled programs would not follow it")
    return new_state


def source_state(source: Any) -> tuple[nnx.GraphDef, nnx.State]:
    """``(graphdef, state)`` of a loaded model (``mmjax.LLM`` or anything with both); TypeError otherwise."""
    if hasattr(source, "graphdef") and hasattr(source, "state"):
        return source.graphdef, source.state
    if hasattr(getattr(source, "llm", None), "state"):  # a TrainResult
        raise TypeError(f"update_weights takes a loaded model; got a {type(source).__name__}: pass its .llm "
                        f"(e.g. update_weights(mmjax.train(...).llm))")
    raise TypeError(f"update_weights takes a loaded model (an mmjax.LLM, with .graphdef and .state), "
                    f"got {type(source).__name__}")


def leaf_paths(state: Any) -> list[str]:
    """Each leaf's path, in ``jax.tree.leaves`` order: ``language_model/layers/0/...`` (the training split's
    names too: ``mmjax.training.params``)."""
    paths = []
    for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]:
        parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        paths.append("/".join(p for p in parts if p != "value"))
    return paths


def check_compatible(state: nnx.State, new_state: nnx.State) -> None:
    """Refuse (``ValueError``, naming the first difference) a ``new_state`` that cannot replace ``state``:
    another parameter tree, or a parameter of another shape or dtype."""
    old_paths, new_paths = leaf_paths(state), leaf_paths(new_state)
    if old_paths != new_paths:
        old_set, new_set = set(old_paths), set(new_paths)
        missing = next((p for p in old_paths if p not in new_set), None)
        extra = next((p for p in new_paths if p not in old_set), None)
        what = f"lacks parameter {missing!r}" if missing else f"has parameter {extra!r} the model lacks" if extra \
            else "orders its parameters differently"
        raise ValueError(f"the new weights are of another architecture: their model {what} "
                         f"({len(new_paths)} parameters, the model has {len(old_paths)})")
    for path, old, new in zip(old_paths, jax.tree.leaves(state), jax.tree.leaves(new_state)):
        if np.shape(old) != np.shape(new) or _dtype(old) != _dtype(new):
            raise ValueError(f"parameter {path!r} of the new weights is {_dtype(new)}{list(np.shape(new))}; "
                             f"the model's is {_dtype(old)}{list(np.shape(old))} (update_weights needs the "
                             f"same architecture, shapes and dtype)")
    if jax.tree.structure(state) != jax.tree.structure(new_state):
        raise ValueError("the new weights' state has the model's parameters but another structure "
                         "(variable types or metadata differ)")


def placed_like(new_state: nnx.State, old_state: nnx.State) -> nnx.State:
    """Copies of ``new_state``'s leaves placed as ``old_state``'s (sharding, commitment, dtype, no weak type), so
    that programs compiled for the old leaves take them without compiling again. Never aliases the source: its
    buffers may be deleted or donated later. Every leaf is copied before this returns (nothing changes on error)."""
    old_leaves = jax.tree.leaves(old_state)
    new_leaves = [_placed_like(new, old) for new, old in zip(jax.tree.leaves(new_state), old_leaves, strict=True)]
    return jax.tree.unflatten(jax.tree.structure(old_state), new_leaves)


def _placed_like(new: Any, old: Any) -> Any:
    if not isinstance(old, jax.Array):
        return new
    if old.committed:
        placed = jax.device_put(new, old.sharding, may_alias=False)
    elif isinstance(new, jax.Array) and not new.committed and new.sharding == old.sharding:
        placed = jax.device_put(new, may_alias=False)  # an uncommitted copy on the same (default) device
    else:  # uncommitted on the default device, as the old one (committed arrays compile other programs)
        placed = jax.device_put(np.asarray(jax.device_get(new)))
    return placed if not placed.weak_type else placed.astype(old.dtype)


def config_difference(old: Any, new: Any) -> str | None:
    """The first field two Hugging Face configs disagree on, as ``"text_config.rms_norm_eps: 1e-06 ->
    0.001"``; None if either is missing or none does (bookkeeping fields such as ``_name_or_path`` aside)."""
    if not (hasattr(old, "to_dict") and hasattr(new, "to_dict")):
        return None
    old_fields, new_fields = _flat(old.to_dict()), _flat(new.to_dict())
    for key in sorted(old_fields.keys() | new_fields.keys()):
        if old_fields.get(key) != new_fields.get(key) and not _bookkeeping(key):
            return f"{key}: {old_fields.get(key)!r} -> {new_fields.get(key)!r}"
    return None


def _flat(fields: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in fields.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _bookkeeping(key: str) -> bool:
    name = key.rsplit(".", 1)[-1]
    return name.startswith("_") or name in ("transformers_version", "dtype", "torch_dtype", "architectures")


def _dtype(x: Any) -> Any:
    return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype


def set_state(llm: Any, state: nnx.State) -> None:
    """``llm.state = state`` on a loaded model, frozen (``mmjax.LLM``) or not."""
    object.__setattr__(llm, "state", state)
