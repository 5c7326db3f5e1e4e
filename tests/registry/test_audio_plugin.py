"""AudioPlugin: (waveform, rate) items, the checkpoint's feature extractor, clear errors."""

import numpy as np
import pytest
from transformers import WhisperFeatureExtractor

from mmjax.registry import MULTIMODAL_REGISTRY, ModelConfig
from toy_vlm import ToyVLM, hf_config


@MULTIMODAL_REGISTRY.register_input_mapper("audio")
@MULTIMODAL_REGISTRY.register_max_multimodal_tokens("audio", 1500)
class ToyAudioLM(ToyVLM):
    pass


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio_checkpoint")
    WhisperFeatureExtractor(feature_size=80, sampling_rate=16000).save_pretrained(path)
    hf_config().save_pretrained(path)
    return str(path)


@pytest.fixture
def audio_config(audio_dir):
    return ModelConfig.from_pretrained(audio_dir, model_cls=ToyAudioLM, limit_mm_per_prompt={"audio": 2})


def tone(seconds: float, hz: float = 440.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_default_mapper_runs_the_checkpoints_feature_extractor(audio_config, audio_dir):
    waveform = tone(1.0)
    out = MULTIMODAL_REGISTRY.map_input(audio_config, {"audio": (waveform, 16000)})
    direct = WhisperFeatureExtractor.from_pretrained(audio_dir)(
        [waveform], sampling_rate=16000, return_tensors="np")["input_features"]
    assert out["input_features"].shape == (1, 80, 3000)
    np.testing.assert_array_equal(out["input_features"], direct)


def test_a_tone_puts_energy_in_its_mel_band(audio_config):
    low = MULTIMODAL_REGISTRY.map_input(audio_config, {"audio": (tone(1.0, 200.0), 16000)})["input_features"][0]
    high = MULTIMODAL_REGISTRY.map_input(audio_config, {"audio": (tone(1.0, 4000.0), 16000)})["input_features"][0]
    first_second = slice(0, 100)  # 10 ms hop
    assert low[:, first_second].mean(axis=1).argmax() < high[:, first_second].mean(axis=1).argmax()


def test_two_clips_batch(audio_config):
    out = MULTIMODAL_REGISTRY.map_input(audio_config, {"audio": [(tone(0.5), 16000), (tone(2.0), 16000)]})
    assert out["input_features"].shape == (2, 80, 3000)


def test_wrong_sample_rate_is_a_clear_error(audio_config):
    with pytest.raises(ValueError, match=r"audio 0 has sample rate 44100 Hz.*expects 16000 Hz; resample it first"):
        MULTIMODAL_REGISTRY.map_input(audio_config, {"audio": (tone(1.0, rate=44100), 44100)})


@pytest.mark.parametrize("bad", [np.zeros(16000), (np.zeros(10), "16k"), "speech.wav", [(np.zeros(10),)]])
def test_unsupported_audio_data_is_a_type_error(audio_config, bad):
    with pytest.raises(TypeError, match="invalid audio data"):
        MULTIMODAL_REGISTRY.map_input(audio_config, {"audio": bad})


def test_malformed_waveforms_are_refused(audio_config):
    with pytest.raises(ValueError, match=r"audio 0: waveform must be a non-empty 1-D array, got shape \(2, 8\)"):
        MULTIMODAL_REGISTRY.map_input(audio_config, {"audio": (np.zeros((2, 8)), 16000)})
    with pytest.raises(ValueError, match="audio 0: sample rate must be > 0"):
        MULTIMODAL_REGISTRY.map_input(audio_config, {"audio": (np.zeros(8), 0)})


def test_max_audio_tokens_and_no_default(audio_config, audio_dir):
    assert MULTIMODAL_REGISTRY.get_max_multimodal_tokens(audio_config) == 25 + 2 * 1500

    @MULTIMODAL_REGISTRY.register_max_multimodal_tokens("audio")
    class NoCount(ToyVLM):
        pass

    config = ModelConfig.from_pretrained(audio_dir, model_cls=NoCount)
    with pytest.raises(ValueError, match="audio plugin has no default max token count; NoCount"):
        MULTIMODAL_REGISTRY.get_max_multimodal_tokens(config)
