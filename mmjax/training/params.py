"""Which parameters train: the projector, LoRA adapters on the decoder, or everything.

The model state is flattened once into leaves with their paths; a ``ParamSplit`` says which
leaves train, so a train step differentiates with respect to those alone (the frozen vision
tower is not even differentiated through when only the projector trains).
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from flax import nnx

from mmjax.engine.weights import leaf_paths

#: What ``trainable=`` accepts.
TRAINABLE = ("projector", "lora", "all")
_NO_GROUPS: Mapping[str, tuple[str, ...]] = MappingProxyType({})


@dataclasses.dataclass(frozen=True)
class ParamSplit:
    """The model state's leaves, split into those that train and those that stay."""

    treedef: Any
    paths: tuple[str, ...]
    trained: tuple[int, ...]  # indices of the trained leaves

    @classmethod
    def build(cls, state: nnx.State, trainable: str,
              groups: Mapping[str, tuple[str, ...]] = _NO_GROUPS) -> ParamSplit:
        """``groups``: the family's ``trainable_groups`` (e.g. ``{"projector": ("multi_modal_projector/",)}``)."""
        if trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}, got {trainable!r}")
        paths = tuple(leaf_paths(state))
        if trainable == "all":
            trained = tuple(range(len(paths)))
        elif trainable == "projector":
            prefixes = tuple(groups.get("projector", ()))
            trained = tuple(i for i, p in enumerate(paths) if prefixes and p.startswith(prefixes))
        else:
            trained = ()
        if trainable == "projector" and not trained:
            raise ValueError(f"the model has no projector parameters to train (looked for {list(prefixes)})")
        return cls(jax.tree.structure(state), paths, trained)

    def split(self, state: nnx.State) -> tuple[list[Any], list[Any]]:
        """``(trained leaves, frozen leaves)`` of ``state``."""
        leaves = jax.tree.leaves(state)
        trained = set(self.trained)
        return ([leaves[i] for i in self.trained], [x for i, x in enumerate(leaves) if i not in trained])

    def merge(self, trained: Sequence[Any], frozen: Sequence[Any]) -> nnx.State:
        """The state with these leaves (the inverse of ``split``)."""
        trained_set, t, f, leaves = set(self.trained), iter(trained), iter(frozen), []
        for i in range(len(self.paths)):
            leaves.append(next(t) if i in trained_set else next(f))
        return jax.tree.unflatten(self.treedef, leaves)
