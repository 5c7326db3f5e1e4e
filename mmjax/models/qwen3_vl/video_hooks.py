"""Qwen3-VL's videos in a prompt: the timestamped run each one becomes, its rows, positions, max tokens, dummy.

transformers' ``Qwen3VLProcessor`` replaces a video's ``<|vision_start|><|video_pad|><|vision_end|>`` (or a
bare ``<|video_pad|>``) by, for each temporal patch, ``<{t:.1f} seconds>`` then ``<|vision_start|>``,
``tokens_per_frame`` times ``<|video_pad|>`` and ``<|vision_end|>`` (``qwen3_vl_video_prompt``), and
tokenizes the prompt's text as a whole. The input processor splices those ids into the prompt's: each
timestamp tokenized with the checkpoint's tokenizer (vLLM tokenizes each on its own), the first one together
with the text before it back to the last added token (``timestamp_join``: ``"describe <|vision_start|>..."``
gives transformers' ``" <"``, where vLLM gives ``" "``, ``"<"``), so the ids equal transformers'.

A video is one ``PlaceholderRange``: its run from its first frame's ``<|vision_start|>`` to its last
``<|vision_end|>``, the timestamps between included (vLLM's range is the whole replacement, an ``is_embed``
mask picking the frame tokens); its first timestamp is text before the range. The engine gives every token
of a range an embedding row, so a video's rows (``video_text_ids``, ``FRAME_ROW`` / ``PADDING_ROW``) hold, at
a timestamp or start/end token, that token's own embedding and zero DeepStack features, and at a frame token
the tower's merged row; the engine, the registry's one-range-per-item checks, the caches' per-item keys and a
prefill chunk that ends inside a video then take a video as they take an image.

Positions (transformers' ``Qwen3VLModel.get_rope_index``): each frame's ``<|video_pad|>`` run is a vision
span of grid ``(1, h, w)`` at its own start; the timestamp and start/end tokens are text.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmjax.models.common.mrope import VisionSpan
from mmjax.models.common.placeholders import Join
from mmjax.models.common.vision_packing import Grid
from mmjax.models.qwen3_vl.config import Qwen3VLConfig
from mmjax.models.qwen3_vl.embedding_rows import FRAME_ROW, PADDING_ROW
from mmjax.models.qwen3_vl.video_budget import max_sampled_frames, max_vision_tokens, video_config, video_grid_of
from mmjax.processing.qwen_vl_config import QwenVideoConfig
from mmjax.registry import InputContext, PlaceholderRange
from mmjax.registry.video_items import VideoItem, video_items
from mmjax.registry.video_limits import video_ceilings

#: The longest timestamp a video may carry (27.8 hours): its tokens bound every timestamp's.
MAX_TIMESTAMP = 99999.9


@functools.lru_cache(maxsize=4096)
def timestamp_ids(tokenizer: Any, seconds: float) -> tuple[int, ...]:
    """The token ids of ``<{seconds:.1f} seconds>`` alone."""
    return tuple(tokenizer.encode(f"<{seconds:.1f} seconds>", add_special_tokens=False))


def max_timestamp_tokens(tokenizer: Any) -> int:
    """Tokens of the longest timestamp a video may carry (``MAX_TIMESTAMP``)."""
    return len(timestamp_ids(tokenizer, MAX_TIMESTAMP))


def video_run(timestamps: Sequence[float], tokens_per_frame: int, cfg: Qwen3VLConfig, tokenizer: Any,
              index: int = 0) -> tuple[list[int], list[int]]:
    """``(lead, run)``: the token ids that stand for one video, per temporal patch its timestamp, vision start,
    frame and end, cut after the first timestamp (the lead, text before the video's placeholder range).

    Raises:
      ValueError: a timestamp with more tokens than ``MAX_TIMESTAMP``'s (naming video ``index``).
    """
    frame = [cfg.vision_start_token_id] + [cfg.video_token_id] * tokens_per_frame + [cfg.vision_end_token_id]
    most, ids = max_timestamp_tokens(tokenizer), []
    for seconds in timestamps:
        stamp = timestamp_ids(tokenizer, seconds)
        if len(stamp) > most:
            raise ValueError(f"video {index}: its frame at {seconds:.1f} seconds is past the longest timestamp "
                             f"Qwen3-VL's buckets allow ({MAX_TIMESTAMP} seconds); give the video's real fps")
        ids += list(stamp) + frame
    first = ids.index(cfg.vision_start_token_id)
    return ids[:first], ids[first:]


def video_runs(ctx: InputContext, data: object, config: QwenVideoConfig) -> list[tuple[list[int], list[int]]]:
    """Each video's ``(lead, run)`` (``video_run``), from its shape and fps alone."""
    cfg, tokenizer, runs = Qwen3VLConfig.from_hf(ctx.get_hf_config()), ctx.get_tokenizer(), []
    for index, item in enumerate(video_items(data)):
        (_, h, w), timestamps = video_grid_of(item, config, index)
        runs.append(video_run(timestamps, h * w // config.merge_size**2, cfg, tokenizer, index))
    return runs


def timestamp_join(tokenizer: Any) -> Join:
    """The ``Join`` of a video's first timestamp with the text before it, as transformers tokenizes the two:
    together (``"describe <|vision_start|>..."`` gives ``" <"``). Only where the text before (back to the last
    added token, where the tokenizer splits anyway) is what tokenizing its own decoded text gives, and the
    joined timestamp has at most ``MAX_TIMESTAMP``'s tokens; else the timestamp is put after it as it is."""
    splits, most = frozenset(tokenizer.added_tokens_decoder), max_timestamp_tokens(tokenizer)

    def join(before: Sequence[int], lead: Sequence[int]) -> tuple[int, Sequence[int]]:
        start = len(before)
        while start > 0 and before[start - 1] not in splits:
            start -= 1
        stretch = list(before[start:])
        if not stretch:
            return 0, lead
        text = tokenizer.decode(stretch)
        if tokenizer.encode(text, add_special_tokens=False) != stretch:
            return 0, lead
        joined = tokenizer.encode(text + tokenizer.decode(list(lead)), add_special_tokens=False)
        common = 0
        while common < min(len(stretch), len(joined)) and stretch[common] == joined[common]:
            common += 1
        if len(joined) - common > most:
            return 0, lead
        return len(stretch) - common, joined[common:]

    return join


def text_row_ids(runs: Sequence[tuple[Sequence[int], Sequence[int]]], video_token_id: int, rows: int) -> np.ndarray:
    """int32 ``[rows]``: the videos' runs (``video_run``: their ranges, not the leads) one after the other,
    each frame token ``FRAME_ROW``, then padding."""
    ids = np.concatenate([np.asarray(run, np.int64) for _, run in runs])
    if len(ids) > rows:
        raise ValueError(f"the videos' {len(ids)} placeholder tokens exceed their bucket's {rows} rows")
    ids = np.where(ids == video_token_id, FRAME_ROW, ids)
    return np.concatenate([ids, np.full(rows - len(ids), PADDING_ROW)]).astype(np.int32)


def per_patch_text(ctx: InputContext) -> int:
    """The most tokens a temporal patch brings besides its frame's: its timestamp, vision start and end."""
    return max_timestamp_tokens(ctx.get_tokenizer()) + 2


def _max_frames(ctx: InputContext) -> int:
    return video_ceilings(ctx.model_config.mm_processor_kwargs, None).max_video_frames


def _within_context(ctx: InputContext, tokens: int) -> int:
    context = ctx.model_config.context_length
    return max(1, tokens if context is None else min(context, tokens))


def max_video_tokens(ctx: InputContext) -> int:
    """The most placeholder tokens (the whole run) one video can have under the ceilings, at most the context."""
    return _within_context(ctx, max_vision_tokens(video_config(ctx), _max_frames(ctx), per_patch_text(ctx)))


def max_frame_tokens(ctx: InputContext) -> int:
    """The most frame tokens (merged tower rows) one video can have, at most the context."""
    return _within_context(ctx, max_vision_tokens(video_config(ctx), _max_frames(ctx)))


def text_capacity(ctx: InputContext, patch_rows: int, num_videos: int) -> int:
    """Rows for the timestamp and start/end tokens of the videos of a bucket of ``patch_rows`` patches: each
    temporal patch has at least one merged row, and ``num_videos`` videos at most their most patches' text."""
    config, extra = video_config(ctx), per_patch_text(ctx)
    most_patches = -(-max_sampled_frames(config, _max_frames(ctx)) // config.temporal_patch_size)
    per_video = _within_context(ctx, most_patches * extra)
    return min(extra * patch_rows // config.merge_size**2, max(1, num_videos) * per_video)


def video_spans(token_ids: Sequence[int], ranges: Sequence[PlaceholderRange], grids: Sequence[Grid],
                video_token_id: int, merge: int) -> list[VisionSpan]:
    """One M-RoPE span per frame: its ``<|video_pad|>`` run inside its video's range, grid ``(1, h, w)`` merged.

    Raises:
      ValueError: a range whose frame runs do not match its video's grid.
    """
    spans = []
    for index, (placeholder, (t, h, w)) in enumerate(zip(ranges, grids)):
        run = np.asarray(token_ids[placeholder.offset:placeholder.offset + placeholder.length]) == video_token_id
        starts = np.flatnonzero(run & ~np.concatenate([[False], run[:-1]]))
        if len(starts) != t or int(run.sum()) != t * (h // merge) * (w // merge):
            raise ValueError(f"video {index}: its placeholders hold {len(starts)} frame runs of {int(run.sum())} "
                             f"tokens, its grid {(t, h, w)} needs {t} of {(h // merge) * (w // merge)}")
        spans += [VisionSpan(placeholder.offset + int(s), (1, h // merge, w // merge)) for s in starts]
    return spans


def dummy_video(ctx: InputContext, num_tokens: int) -> tuple[VideoItem, int]:
    """A video of zeros (``8 x 8`` merged units a frame while the budget allows, an fps that keeps its frames)
    and its run's length: the most frames, counting up, whose run fits ``num_tokens`` (the fewest if none does).
    For the encoder's worst case; the dummy prompt's ranges are the max tokens whatever this video's run is."""
    config, tokenizer = video_config(ctx), ctx.get_tokenizer()
    ceilings = video_ceilings(ctx.model_config.mm_processor_kwargs, None)
    side = config.factor * 8  # 64 tokens per temporal patch while the budget allows
    fps = float(config.fps) if config.do_sample_frames and config.num_frames is None and config.fps else 24.0
    best = None
    for frames in range(config.temporal_patch_size, max_sampled_frames(config, ceilings.max_video_frames) + 1):
        if frames * side * side > ceilings.max_video_pixels:
            break
        item = VideoItem(np.zeros((frames, side, side, 3), np.uint8), {"fps": fps})
        (t, h, w), timestamps = video_grid_of(item, config)
        texts = sum(len(timestamp_ids(tokenizer, s)) for s in timestamps[1:]) + 2 * t
        length = texts + t * h * w // config.merge_size**2
        if best is not None and length > num_tokens:
            break
        best = (item, length)
    return best
