"""MultiModalInputs: immutability, PyTree behaviour, and batch() stacking rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.registry import MultiModalInputs


def test_batch_stacks_arrays_of_equal_shape():
    a, b = np.arange(6.0).reshape(2, 3), np.ones((2, 3))
    batched = MultiModalInputs.batch([MultiModalInputs(x=a), MultiModalInputs(x=b)])
    assert isinstance(batched["x"], np.ndarray)
    np.testing.assert_array_equal(batched["x"], np.stack([a, b]))


def test_batch_keeps_a_list_when_shapes_differ():
    a, b = np.zeros((2, 3)), np.zeros((4, 3))
    batched = MultiModalInputs.batch([MultiModalInputs(x=a), MultiModalInputs(x=b)])
    assert isinstance(batched["x"], list) and batched["x"][0] is a and batched["x"][1] is b


def test_batch_keeps_a_list_when_dtypes_differ():
    a, b = np.zeros(3, np.float32), np.zeros(3, np.int32)
    assert isinstance(MultiModalInputs.batch([MultiModalInputs(x=a), MultiModalInputs(x=b)])["x"], list)


def test_batch_stacks_nested_lists_recursively():
    """Each input holds a list of two same-shape arrays: stacks to [inputs, 2, ...]."""
    items = [MultiModalInputs(x=[np.full(3, i), np.full(3, i + 10)]) for i in range(4)]
    batched = MultiModalInputs.batch(items)
    assert batched["x"].shape == (4, 2, 3)
    assert batched["x"][2, 1, 0] == 12


def test_batch_nested_lists_of_different_lengths_stay_lists():
    items = [MultiModalInputs(x=[np.zeros(3)]), MultiModalInputs(x=[np.zeros(3), np.zeros(3)])]
    batched = MultiModalInputs.batch(items)
    assert isinstance(batched["x"], list)
    assert batched["x"][0].shape == (1, 3) and batched["x"][1].shape == (2, 3)


def test_batch_of_jax_arrays_gives_a_jax_array():
    batched = MultiModalInputs.batch([MultiModalInputs(x=jnp.ones(2)), MultiModalInputs(x=jnp.zeros(2))])
    assert isinstance(batched["x"], jax.Array) and batched["x"].shape == (2, 2)


def test_batch_requires_the_same_keys():
    with pytest.raises(ValueError, match=r"input 1 has keys \['y'\].*input 0 has keys \['x'\]"):
        MultiModalInputs.batch([MultiModalInputs(x=np.zeros(1)), MultiModalInputs(y=np.zeros(1))])


def test_batch_of_nothing_is_empty():
    assert MultiModalInputs.batch([]) == {}


def test_inputs_are_immutable_and_combine_with_or():
    inputs = MultiModalInputs({"a": np.zeros(1)}, b=np.ones(1))
    with pytest.raises(TypeError):
        inputs["c"] = np.zeros(1)  # type: ignore[index]
    combined = inputs | {"c": np.zeros(2)}
    assert set(combined) == {"a", "b", "c"} and set(inputs) == {"a", "b"}


def test_inputs_are_a_pytree_accepted_by_jit():
    inputs = MultiModalInputs(pixel_values=np.ones((2, 3)), image_sizes=np.array([[4, 5]]))

    @jax.jit
    def total(kwargs):
        return kwargs["pixel_values"].sum() + kwargs["image_sizes"].sum()

    assert float(total(inputs)) == 6 + 9
    leaves, treedef = jax.tree_util.tree_flatten(inputs)
    assert len(leaves) == 2
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert isinstance(rebuilt, MultiModalInputs) and set(rebuilt) == set(inputs)
