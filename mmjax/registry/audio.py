"""``AudioPlugin``: ``(waveform, sample_rate)`` pairs."""

from __future__ import annotations

from typing import Any

import numpy as np

from mmjax.registry.config import InputContext
from mmjax.registry.inputs import MultiModalInputs
from mmjax.registry.plugin import MultiModalPlugin


def _is_audio_item(item: object) -> bool:
    return (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], np.ndarray)
        and isinstance(item[1], (int, float, np.integer, np.floating))
        and not isinstance(item[1], bool)
    )


def parse_audio_items(data: object) -> list[tuple[np.ndarray, float]]:
    """``data`` as a list of ``(waveform f32[samples], sample_rate)``.

    Raises:
      TypeError: not an ``(ndarray, rate)`` pair or a list of them.
      ValueError: an empty list, a waveform that is not 1-D or is empty, a rate <= 0.
    """
    if _is_audio_item(data):
        items = [data]
    elif isinstance(data, list) and data and all(_is_audio_item(d) for d in data):
        items = data
    elif isinstance(data, list) and not data:
        raise ValueError("empty list of audio items: pass at least one, or leave the key out")
    else:
        raise TypeError(
            f"invalid audio data of type {type(data).__name__}: expected a (numpy waveform, "
            f"sample_rate) tuple or a list of them"
        )
    for i, (waveform, rate) in enumerate(items):
        if waveform.ndim != 1 or waveform.size == 0:
            raise ValueError(f"audio {i}: waveform must be a non-empty 1-D array, got shape {waveform.shape}")
        if rate <= 0:
            raise ValueError(f"audio {i}: sample rate must be > 0, got {rate}")
    return [(np.asarray(w, np.float32), float(r)) for w, r in items]


class AudioPlugin(MultiModalPlugin):
    """Plugin for audio data: ``multi_modal_data={"audio": (waveform, sample_rate) | list}``.

    The default input mapper runs the checkpoint's Hugging Face feature extractor
    (Whisper-style log-mel features, numpy outputs); the audio must already be at
    the extractor's sampling rate. There is no default max token count: an audio
    model registers its own, because it depends on the audio encoder.
    """

    def get_data_key(self) -> str:
        return "audio"

    def _default_input_mapper(self, ctx: InputContext, data: object, **mm_processor_kwargs: Any) -> MultiModalInputs:
        items = parse_audio_items(data)
        extractor = ctx.get_hf_feature_extractor()
        expected_rate = getattr(extractor, "sampling_rate", None)
        for i, (_, rate) in enumerate(items):
            if expected_rate is not None and rate != expected_rate:
                raise ValueError(
                    f"audio {i} has sample rate {rate:g} Hz, but the feature extractor of "
                    f"{ctx.model_config.name} expects {expected_rate} Hz; resample it first"
                )
        features = extractor(
            [w for w, _ in items], sampling_rate=expected_rate, return_tensors="np", **mm_processor_kwargs
        )
        return MultiModalInputs({k: np.asarray(v) for k, v in features.items()})

    def _default_max_multimodal_tokens(self, ctx: InputContext) -> int:
        raise ValueError(
            f"the audio plugin has no default max token count; {ctx.model_config.name} must "
            f"register one: MULTIMODAL_REGISTRY.register_max_multimodal_tokens('audio', n_or_fn)"
        )
