"""``VideoPlugin``: videos as vLLM takes them, uint8 frames ``[F, H, W, 3]`` with an optional frame rate.

``multi_modal_data={"video": frames}``, ``{"video": (frames, {"fps": 30.0})}`` or a list of videos
(see ``video_items`` for every form). The plugin checks the data's form and the ceilings on frames
and pixels (``video_limits``) before any work, and hands the model's hooks a ``VideoItem`` per
video. There is no default mapper: transformers' video processors need torchvision, so a model
registers its own (Qwen2.5-VL's and Qwen3-VL's are in ``mmjax.processing.qwen_vl_video``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mmjax.registry.config import InputContext, ModelConfig
from mmjax.registry.inputs import MultiModalInputs
from mmjax.registry.plugin import MultiModalPlugin
from mmjax.registry.video_items import VideoItem, parse_video_data, split_videos
from mmjax.registry.video_limits import CEILING_KEYS, VideoCeilings, video_ceilings

#: vLLM's video plugin default, used only when a model registers the max token count without a value.
DEFAULT_MAX_VIDEO_TOKENS = 4096


class VideoPlugin(MultiModalPlugin):
    """Plugin for video data: ``multi_modal_data={"video": frames | (frames, {"fps": ...}) | list}``.

    Args:
      ceilings: the most frames and pixels of one video when the model config's
        ``mm_processor_kwargs`` set none (``max_video_frames``, ``max_video_pixels``).
    """

    def __init__(self, ceilings: VideoCeilings = VideoCeilings()) -> None:
        self.ceilings = ceilings

    def get_data_key(self) -> str:
        return "video"

    def parse_data(self, data: object) -> VideoItem | None | list[VideoItem | None]:
        """One ``VideoItem`` for one video, a list of them for several (``video_items.parse_video_data``)."""
        return parse_video_data(data)

    def count_items(self, data: object) -> int:
        return len(split_videos(data))

    def check_data(
        self, model_config: ModelConfig, data: object, mm_processor_kwargs: Mapping[str, Any] | None = None
    ) -> None:
        """Refuse a video beyond the ceilings in effect (``ValueError`` naming the video and the kwarg)."""
        ceilings = video_ceilings(model_config.mm_processor_kwargs, mm_processor_kwargs, self.ceilings)
        parsed = self.parse_data(data)
        for index, item in enumerate(parsed if isinstance(parsed, list) else [parsed]):
            if item is not None:
                ceilings.check(item, index)

    def _plugin_keywords(self) -> frozenset[str]:
        return frozenset(CEILING_KEYS)

    def _default_input_mapper(self, ctx: InputContext, data: object, **mm_processor_kwargs: Any) -> MultiModalInputs:
        raise ValueError(
            f"{ctx.model_config.name} registers no video mapper of its own, and mmjax has no default one "
            f"(transformers' video processors need torchvision); register one: "
            f"MULTIMODAL_REGISTRY.register_input_mapper('video', mapper)"
        )

    def _default_mapper_keywords(self, ctx: InputContext) -> frozenset[str]:
        return frozenset()

    def _default_max_multimodal_tokens(self, ctx: InputContext) -> int:
        return DEFAULT_MAX_VIDEO_TOKENS
