"""A toy model that takes videos, registered through the video hooks (for the video plugin's tests).

Each video marker (``VIDEO_TOKEN``) becomes one placeholder token per frame. The mapper gives each
frame's mean colour and each video's fps (NaN when unknown), so a test can see exactly what the
hooks received; it counts its calls, so a test can see that a refusal came before any mapping.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mmjax.registry import (
    INPUT_REGISTRY,
    MULTIMODAL_REGISTRY,
    DecoderOnlyInputs,
    InputContext,
    MultiModalInputs,
    PlaceholderRange,
    VideoItem,
    video_items,
)
from toy_vlm import ToyVLM

VIDEO_TOKEN = 382
MAX_VIDEO_TOKENS = 16
CALLS = {"mapper": 0, "processor": 0}
SEEN: list[VideoItem] = []


def map_videos(ctx: InputContext, data: object) -> MultiModalInputs:
    """``video_frame_means`` f32 ``[total frames, 3]``, ``video_fps`` f32 ``[videos]``."""
    CALLS["mapper"] += 1
    items = video_items(data)
    SEEN.extend(items)  # every video the mapper was given, in order (each item is mapped alone)
    means = np.concatenate([item.frames.reshape(item.frames.shape[0], -1, 3).mean(1) for item in items])
    fps = np.array([np.nan if item.fps is None else item.fps for item in items], np.float32)
    return MultiModalInputs(video_frame_means=means.astype(np.float32), video_fps=fps)


def expand_video_tokens(ctx: InputContext, inputs: DecoderOnlyInputs) -> DecoderOnlyInputs:
    CALLS["processor"] += 1
    videos = inputs.multi_modal_data.get("video")
    counts = iter([item.frames.shape[0] for item in video_items(videos)] if videos is not None else [])
    ids: list[int] = []
    ranges = []
    for token in inputs.prompt_token_ids:
        if token == VIDEO_TOKEN:
            n = next(counts)
            ranges.append(PlaceholderRange(len(ids), n))
            ids.extend([token] * n)
        else:
            ids.append(token)
    return dataclasses.replace(inputs, prompt_token_ids=tuple(ids),
                               multi_modal_placeholders={"video": tuple(ranges)} if videos is not None else {})


@MULTIMODAL_REGISTRY.register_input_mapper("video", map_videos)
@MULTIMODAL_REGISTRY.register_max_multimodal_tokens("video", MAX_VIDEO_TOKENS)
@INPUT_REGISTRY.register_input_processor(expand_video_tokens)
class ToyVideoVLM(ToyVLM):
    pass
