"""Multimodal data types: what a prompt carries in, and the model kwargs that come out.

The names are vLLM's (``vllm.multimodal.base``); arrays are numpy or jax arrays,
never torch tensors, and ``MultiModalInputs`` is an immutable mapping that is
also a JAX PyTree, so it can be passed to ``jax.jit`` as it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypedDict, Union

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from mmjax.types import ArrayLike

#: An array, or a (possibly nested) list of arrays whose shapes may differ.
NestedTensors = Union[list["NestedTensors"], list[ArrayLike], ArrayLike]

#: The batched form of several ``MultiModalInputs``: a dict of stacked arrays or lists.
BatchedTensorInputs = dict[str, NestedTensors]


class MultiModalDataBuiltins(TypedDict, total=False):
    """The modalities mmjax understands out of the box.

    Attributes:
      image: a PIL image, or a list of them.
      audio: ``(waveform f32[samples], sample_rate)``, or a list of such pairs.
      video: uint8 frames ``[F, H, W, 3]`` or a list of PIL images (one video), either optionally
        as ``(frames, {"fps": float})``; or a list of such videos (see ``registry.video_items``).
    """

    image: Union[Image.Image, list[Image.Image]]
    audio: Union[tuple[np.ndarray, Union[int, float]], list[tuple[np.ndarray, Union[int, float]]]]
    video: Union[np.ndarray, list[Image.Image], tuple[Any, Mapping[str, Any]], list[Any]]


#: A prompt's ``multi_modal_data``: the builtins, or any modality a plugin handles.
MultiModalDataDict = Union[MultiModalDataBuiltins, Mapping[str, Union[object, list[object]]]]


class PlaceholderRange(NamedTuple):
    """Where one multimodal item's placeholder tokens sit in the token ids: ``[offset, offset + length)``."""

    offset: int
    length: int


def _is_array(value: Any) -> bool:
    return isinstance(value, (np.ndarray, jax.Array))


def _try_stack(nested: NestedTensors) -> NestedTensors:
    """Stack a nested list into one array when every leaf list holds arrays of one shape."""
    if _is_array(nested):
        return nested
    stacked = [_try_stack(item) for item in nested]
    if not stacked or not all(_is_array(item) for item in stacked):
        return stacked
    if len({(item.shape, item.dtype) for item in stacked}) != 1:
        return stacked
    if all(isinstance(item, np.ndarray) for item in stacked):
        return np.stack(stacked)
    return jnp.stack(stacked)


class MultiModalInputs(Mapping[str, NestedTensors]):
    """The keyword arguments a model's forward receives for its multimodal inputs.

    Built like a dict (``MultiModalInputs({"pixel_values": x})`` or with keyword
    arguments) but immutable, unlike vLLM's: combine two with ``|``. It is a
    PyTree (keys sorted), so it can be an argument of a jitted function.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, NestedTensors] | None = None, /, **kwargs: NestedTensors):
        merged = dict(data or {})
        merged.update(kwargs)
        self._data = merged

    def __getitem__(self, key: str) -> NestedTensors:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={_describe(v)}" for k, v in self._data.items())
        return f"MultiModalInputs({parts})"

    def __or__(self, other: Mapping[str, NestedTensors]) -> "MultiModalInputs":
        return MultiModalInputs({**self._data, **other})

    @staticmethod
    def batch(inputs_list: Sequence["MultiModalInputs"]) -> BatchedTensorInputs:
        """Batch several inputs into one dict with the same keys.

        A value becomes one stacked array (new leading axis) when every input's
        value is an array (or a list that stacks to one) of the same shape and
        dtype; otherwise it is the list of the inputs' values.

        Raises:
          ValueError: the inputs do not all have the same keys.
        """
        if not inputs_list:
            return {}
        keys = set(inputs_list[0])
        for i, inputs in enumerate(inputs_list):
            if set(inputs) != keys:
                raise ValueError(
                    f"MultiModalInputs.batch: input {i} has keys {sorted(inputs)}, "
                    f"but input 0 has keys {sorted(keys)}; every input must share the same keys"
                )
        return {key: _try_stack([inputs[key] for inputs in inputs_list]) for key in inputs_list[0]}


def _describe(value: NestedTensors) -> str:
    if _is_array(value):
        return f"{value.dtype}{list(value.shape)}"
    return "[" + ", ".join(_describe(v) for v in value) + "]"


jax.tree_util.register_pytree_with_keys(
    MultiModalInputs,
    lambda m: (tuple((jax.tree_util.DictKey(k), m[k]) for k in sorted(m)), tuple(sorted(m))),
    lambda keys, children: MultiModalInputs(dict(zip(keys, children))),
)
