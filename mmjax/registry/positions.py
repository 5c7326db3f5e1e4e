"""Rotary positions a model family computes from a prompt (vLLM's ``SupportsMRoPE``).

Most decoders turn each token by its index. Qwen-VL's M-RoPE gives every token
three positions (temporal, height, width): an image's tokens share a temporal
position and take their grid row and column, and every token after the image
is shifted by what the image saved. A family that needs this declares
``SupportsMRoPE`` and computes the positions once per prompt, on the host; the
engine carries them and adds ``rope_delta`` for every later token (decode steps
included). The cache index of a token stays its plain index.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np

from mmjax.registry.config import InputContext
from mmjax.registry.prompts import DecoderOnlyInputs


class SupportsMRoPE:
    """Mixin of a model whose rotary embedding reads several positions per token.

    The class implements::

        @classmethod
        def get_mrope_input_positions(cls, ctx: InputContext, inputs: DecoderOnlyInputs) -> tuple[np.ndarray, int]

    ``inputs`` is the input processor's output (placeholders expanded, the items, the request's
    ``mm_processor_kwargs``); it returns ``(positions int32[P, L], rope_delta)``: the prompt's
    positions, and what a token at index ``i >= L`` adds to ``i`` on every axis.
    """

    supports_mrope: ClassVar[Literal[True]] = True


def supports_mrope(model: object) -> bool:
    """Whether a model class or instance declares ``SupportsMRoPE``."""
    return bool(getattr(model, "supports_mrope", False))


def prompt_rope_positions(ctx: InputContext, inputs: DecoderOnlyInputs) -> tuple[np.ndarray | None, int]:
    """``(positions int32[P, L], rope_delta)`` of a prompt, or ``(None, 0)`` for one index per token.

    Raises:
      ValueError: the model returned positions of the wrong shape or type (names the model).
    """
    model_cls: Any = ctx.model_config.model_cls
    if not supports_mrope(model_cls):
        return None, 0
    positions, delta = model_cls.get_mrope_input_positions(ctx, inputs)
    positions, length = np.asarray(positions), len(inputs.prompt_token_ids)
    if positions.ndim != 2 or positions.shape[1] != length or not np.issubdtype(positions.dtype, np.integer):
        raise ValueError(f"{ctx.model_config.name}: get_mrope_input_positions must return int positions of shape "
                         f"[P, {length}], got {positions.dtype}{list(positions.shape)}")
    return positions.astype(np.int32), int(delta)
