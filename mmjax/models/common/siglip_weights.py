"""The weight rows of the SigLIP vision tower (``common.siglip``), for the families that use it."""

from __future__ import annotations

from mmjax.models.common.weights import EMBEDDING, LAYER_NORM, LINEAR, LeafRule

#: The patch convolution with its bias: torch's OIHW kernel to flax's HWIO.
CONV2D_WITH_BIAS: tuple[LeafRule, ...] = (("weight", "kernel", (2, 3, 1, 0)), ("bias", "bias", None))


def siglip_rows(hf_prefix: str = "model.vision_tower.", our_prefix: str = "vision_tower/"
                ) -> tuple[tuple[str, str, tuple[LeafRule, ...]], ...]:
    """``(HF module, our module, kind)`` rows of the tower; ``{i}`` rows repeat per encoder layer."""
    h, o = hf_prefix, our_prefix
    layer = tuple((h + f"encoder.layers.{{i}}.{name}", o + "layers/{i}/" + name.replace(".", "/"), kind)
                  for name, kind in (("self_attn.q_proj", LINEAR), ("self_attn.k_proj", LINEAR),
                                     ("self_attn.v_proj", LINEAR), ("self_attn.out_proj", LINEAR),
                                     ("layer_norm1", LAYER_NORM), ("layer_norm2", LAYER_NORM),
                                     ("mlp.fc1", LINEAR), ("mlp.fc2", LINEAR)))
    return (
        (h + "embeddings.patch_embedding", o + "embeddings/patch_embedding", CONV2D_WITH_BIAS),
        (h + "embeddings.position_embedding", o + "embeddings/position_embedding", EMBEDDING),
        (h + "post_layernorm", o + "post_layernorm", LAYER_NORM),
    ) + layer
