"""A vision tower's attention on the CPU kernel (``mmjax.models.common.native_attention``): inside
``native_attention_on_cpu`` the CLIP tower calls the kernel and equals its XLA attention (float32 to 1e-5,
bfloat16 within bfloat16's rounding); outside it (training, ``LLM.logits``), the kernel is never called; and
the engine's encoder program on one CPU device traces the tower inside it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.engine.step import encoder_program
from mmjax.kernels_cpu.ragged_paged_attention import target_name
from mmjax.models.common.clip import CLIPVisionConfig, CLIPVisionTower
from mmjax.models.common.native_attention import native_attention_on_cpu

CONFIG = CLIPVisionConfig(hidden_size=64, intermediate_size=96, num_layers=2, num_heads=2, image_size=42,
                          patch_size=7)  # 37 rows (36 patches and the class token): 3 pages of 16, the last in part


def tower_and_pixels(dtype):
    tower = CLIPVisionTower(CONFIG, param_dtype=dtype, rngs=nnx.Rngs(0))
    pixels = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 42, 42)), jnp.float32)
    return tower, pixels


def run(tower, pixels, native: bool):
    graphdef, state = nnx.split(tower)

    def forward(state, pixels):
        if native:
            with native_attention_on_cpu():
                return nnx.merge(graphdef, state)(pixels)[-1]
        return nnx.merge(graphdef, state)(pixels)[-1]

    fn = jax.jit(forward)
    return fn(state, pixels), fn.lower(state, pixels).as_text()


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 5e-2)])
def test_clip_attention_on_the_kernel_equals_xla(dtype, tol):
    tower, pixels = tower_and_pixels(dtype)
    native, native_text = run(tower, pixels, native=True)
    xla, xla_text = run(tower, pixels, native=False)
    head_dim = CONFIG.hidden_size // CONFIG.num_heads
    assert target_name(head_dim) in native_text
    assert target_name(head_dim) not in xla_text
    native, xla = np.asarray(native, np.float32), np.asarray(xla, np.float32)
    np.testing.assert_allclose(native, xla, rtol=tol, atol=tol * np.abs(xla).max())


def test_the_engines_encoder_program_traces_the_tower_inside_it(tmp_path):
    """What the engine runs on one CPU device: the encoder program's attention is the kernel's."""
    import mmjax
    from mmjax.testing.checkpoints import make_tiny_llava_checkpoint

    llm = mmjax.load(make_tiny_llava_checkpoint(tmp_path / "llava"))
    vision = llm.hf_config.vision_config
    state_leaves, state_def = jax.tree.flatten(llm.state)
    pixels = jnp.zeros((1, 3, vision.image_size, vision.image_size), jnp.float32)
    tokens = (vision.image_size // vision.patch_size) ** 2
    arena = jnp.zeros((1, tokens, llm.hf_config.text_config.hidden_size), llm.dtype)
    program = encoder_program(llm.graphdef, state_def, None)
    text = program.lower(state_leaves, arena, {"pixel_values": pixels}, jnp.arange(tokens)).as_text()
    head_dim = vision.hidden_size // vision.num_attention_heads
    assert target_name(head_dim) in text
