"""The torch log-mel front end against transformers' WhisperFeatureExtractor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from espnet2_ext.speechllm.frontend import WhisperLogMel, whisper_log_mel


def speech_like(num_samples: int, seed: int = 0) -> np.ndarray:
    """Noise shaped by a slow envelope and a few tones: a dynamic range wider than 80 dB is clamped."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / 16000
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t) ** 2
    tones = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 640.0, 2900.0))
    return (0.1 * envelope * (tones + rng.standard_normal(num_samples))).astype(np.float32)


def reference(wave: np.ndarray, n_mels: int) -> np.ndarray:
    """Upstream features, (T, n_mels), always for the 30-s window."""
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    return extractor(wave, sampling_rate=16000, return_tensors="np").input_features[0].T


@pytest.mark.parametrize("n_mels", [80, 128])
def test_30s_mode_equals_feature_extractor(n_mels):
    wave = speech_like(16000 * 3 + 77)
    got = whisper_log_mel(torch.from_numpy(wave), n_mels=n_mels, pad_to_30s=True)
    assert got.shape == (1, 3000, n_mels)
    assert np.abs(got[0].numpy() - reference(wave, n_mels)).max() <= 1e-4


def test_30s_mode_crops_long_audio():
    wave = speech_like(16000 * 31)
    got = whisper_log_mel(torch.from_numpy(wave), pad_to_30s=True)
    assert got.shape == (1, 3000, 80)
    assert np.abs(got[0].numpy() - reference(wave, 80)).max() <= 1e-4


@pytest.mark.parametrize("extra, exact", [(250 - 160, True), (16 + 160, False)])
def test_variable_length_is_truncated_upstream_except_a_boundary_frame(extra, exact):
    """T = N // 160 frames; frame t's window ends at 160 t + 200, so only the last frame can differ,
    and only when N % 160 < 40 (its window then reaches past the end: reflect padding vs zeros)."""
    wave = speech_like(16000 + extra)
    got = whisper_log_mel(torch.from_numpy(wave))[0].numpy()
    want = reference(wave, 80)
    T = len(wave) // 160
    assert got.shape == (T, 80)
    assert np.abs(got[: T - 1] - want[: T - 1]).max() <= 1e-4
    last_diff = np.abs(got[T - 1] - want[T - 1]).max()
    assert last_diff <= 1e-4 if exact else last_diff > 1e-3


def test_ragged_batch_equals_single_runs():
    frontend = WhisperLogMel(n_mels=80, pad_to_30s=False)
    waves = [speech_like(n, seed=n) for n in (4000, 9999, 6400)]
    batch = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(w) for w in waves], batch_first=True)
    lengths = torch.tensor([len(w) for w in waves])
    feats, feats_lengths = frontend(batch, lengths)
    assert feats_lengths.tolist() == [25, 62, 40]
    assert feats.shape == (3, 62, 80)
    assert list(frontend.parameters()) == []
    for b, w in enumerate(waves):
        single = whisper_log_mel(torch.from_numpy(w))[0]
        assert torch.allclose(feats[b, : feats_lengths[b]], single, atol=1e-5)
        assert feats[b, feats_lengths[b] :].abs().sum() == 0


def test_padded_batch_in_30s_mode_ignores_the_batch_padding():
    frontend = WhisperLogMel(n_mels=80, pad_to_30s=True)
    short, longer = speech_like(8000, seed=1), speech_like(20000, seed=2)
    batch = torch.zeros(2, 20000)
    batch[0, :8000], batch[1] = torch.from_numpy(short), torch.from_numpy(longer)
    batch[0, 8000:] = 1.0  # garbage past the length must not leak in
    feats, feats_lengths = frontend(batch, torch.tensor([8000, 20000]))
    assert feats.shape == (2, 3000, 80) and feats_lengths.tolist() == [50, 125]
    assert np.abs(feats[0].numpy() - reference(short, 80)).max() <= 1e-4
    assert frontend.output_size() == 80


def test_too_short_wave_is_an_error():
    with pytest.raises(ValueError, match="shorter than one hop"):
        WhisperLogMel()(torch.zeros(2, 1000), torch.tensor([1000, 100]))
