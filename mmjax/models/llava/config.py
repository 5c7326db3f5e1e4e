"""The validated, hashable LLaVA config: what the model and its registry hooks read.

``image_tokens_per_image`` is the one place the number of placeholder tokens per
image is computed; the model, the input processor, the max-token count and the
dummy data all use it.
"""

from __future__ import annotations

import dataclasses
import os

from mmjax.models.common.clip import CLIPVisionConfig
from mmjax.models.common.layers import check_activation
from mmjax.models.common.decoder_config import DecoderConfig

_SELECT_STRATEGIES = ("default", "full")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlavaConfig:
    """A validated, hashable view of a transformers ``LlavaConfig``."""

    vision: CLIPVisionConfig
    text: DecoderConfig
    image_token_index: int
    vision_feature_layer: int | tuple[int, ...] = -2
    vision_feature_select_strategy: str = "default"
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True

    @property
    def feature_layers(self) -> tuple[int, ...]:
        """Indices into the tower's hidden states, each in ``[0, num_layers]``."""
        layers = self.vision_feature_layer
        layers = (layers,) if isinstance(layers, int) else layers
        n = self.vision.num_layers + 1  # hidden states include the embeddings
        for layer in layers:
            if not -n <= layer < n:
                raise ValueError(f"vision_feature_layer={layer} is out of range for a tower of {n - 1} layers")
        return tuple(layer % n for layer in layers)

    @property
    def image_tokens_per_image(self) -> int:
        """Placeholder tokens one image becomes (576 for LLaVA-1.5)."""
        drop_cls = self.vision_feature_select_strategy == "default"
        return self.vision.num_patches + (0 if drop_cls else 1)

    @classmethod
    def from_hf(
        cls, hf, *, model_type: str = "llava", strategies: tuple[str, ...] = _SELECT_STRATEGIES
    ) -> "LlavaConfig":
        """Build from a transformers ``LlavaConfig``; raise naming any unsupported field.

        LLaVA-NeXT reuses it with ``model_type="llava_next"`` and only the
        "default" strategy (a tile's features form a grid only without CLS).
        """
        if getattr(hf, "model_type", None) != model_type:
            raise ValueError(
                f"config is for model_type={getattr(hf, 'model_type', None)!r} "
                f"(architectures={getattr(hf, 'architectures', None)}), not {model_type!r}"
            )
        strategy = hf.vision_feature_select_strategy
        if strategy not in strategies:
            raise NotImplementedError(
                f"config field vision_feature_select_strategy={strategy!r} is not supported "
                f"for {model_type}; supported: {strategies}"
            )
        layer = hf.vision_feature_layer
        if not _is_int(layer) and not (isinstance(layer, (list, tuple)) and layer and all(map(_is_int, layer))):
            raise TypeError(
                f"{_config_file(hf)}: field vision_feature_layer must be an int or a list of ints, "
                f"got {type(layer).__name__} {layer!r}"
            )
        if not _is_int(hf.image_token_id):
            raise TypeError(
                f"{_config_file(hf)}: field image_token_index (image_token_id) must be an int, "
                f"got {type(hf.image_token_id).__name__} {hf.image_token_id!r}"
            )
        cfg = cls(
            vision=CLIPVisionConfig.from_hf(hf.vision_config),
            text=DecoderConfig.from_hf(hf.text_config, tie_word_embeddings=hf.tie_word_embeddings),
            image_token_index=hf.image_token_id,
            vision_feature_layer=layer if isinstance(layer, int) else tuple(layer),
            vision_feature_select_strategy=strategy,
            projector_hidden_act=check_activation(hf.projector_hidden_act, "projector_hidden_act"),
            projector_bias=bool(getattr(hf, "multimodal_projector_bias", True)),
        )
        cfg.feature_layers  # validates the layer indices now, not at the first forward
        return cfg


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _config_file(hf) -> str:
    """Where ``hf`` was read from, for error messages ("config.json" for a config built in code)."""
    directory = getattr(hf, "name_or_path", "") or ""
    return os.path.join(directory, "config.json") if directory else "config.json"
