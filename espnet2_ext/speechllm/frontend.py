"""Whisper's log-mel front end in torch, batched, with a variable-length mode.

Whisper was trained on 30-s windows: ``WhisperFeatureExtractor`` zero-pads every
waveform to 480,000 samples, takes a centred STFT (n_fft 400, hop 160, Hann),
drops the last frame, applies 80 or 128 slaney mel filters, ``log10`` with a
1e-10 floor, clamps the dynamic range to ``max - 8`` and maps ``(x + 4) / 4``.
``pad_to_30s=True`` reproduces exactly that (3000 frames per utterance).

``pad_to_30s=False`` (variable length) runs the same recipe on the utterance's
own samples: ``T = N // 160`` frames, and the dynamic-range max is taken over
the utterance itself. Frame ``t`` covers samples ``[160 t - 200, 160 t + 200)``,
so all frames but the last equal the 30-s features truncated to ``T`` frames;
the last one does too when ``N % 160 >= 40``, and otherwise sees the centred
STFT's reflect padding instead of the 30-s mode's zeros. (Equality also needs
the same max, which holds unless that last frame is the loudest.)
"""

from __future__ import annotations

import torch
from espnet2.asr.frontend.abs_frontend import AbsFrontend
from transformers.audio_utils import mel_filter_bank

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SAMPLES = 30 * SAMPLE_RATE
CHUNK_FRAMES = CHUNK_SAMPLES // HOP_LENGTH
# Log-mel value of digital silence, relative to the utterance's maximum, after
# the dynamic-range clamp and the (x + 4) / 4 scaling: ((max - 8) + 4) / 4.
SILENCE_BELOW_MAX = 2.0


def whisper_mel_filters(n_mels: int) -> torch.Tensor:
    """Slaney mel filters as WhisperFeatureExtractor builds them, (n_fft//2+1, n_mels)."""
    filters = mel_filter_bank(
        num_frequency_bins=1 + N_FFT // 2,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(filters).float()


def num_frames(num_samples: torch.Tensor | int, pad_to_30s: bool = False) -> torch.Tensor | int:
    """Number of valid log-mel frames for ``num_samples`` samples (capped at 3000 in 30-s mode)."""
    frames = num_samples // HOP_LENGTH
    if not pad_to_30s:
        return frames
    if isinstance(frames, torch.Tensor):
        return frames.clamp(max=CHUNK_FRAMES)
    return min(frames, CHUNK_FRAMES)


def _log_mel(wave: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """(B, N) equal-length waves -> (B, N // 160, n_mels), dynamic range per item."""
    window = torch.hann_window(N_FFT, device=wave.device)
    stft = torch.stft(wave.float(), N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = (stft[..., :-1].abs() ** 2).contiguous()
    mel = filters.to(wave.device).T @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    peak = log_spec.amax(dim=(1, 2), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    return ((log_spec + 4.0) / 4.0).transpose(1, 2)


def whisper_log_mel(wave: torch.Tensor, n_mels: int = 80, pad_to_30s: bool = False) -> torch.Tensor:
    """Log-mel of one wave (N,) or an equal-length batch (B, N) -> (B, T, n_mels).

    ``pad_to_30s`` zero-pads or crops to 30 s first (T = 3000), as Whisper does;
    otherwise T = N // 160. Use :class:`WhisperLogMel` for ragged batches.
    """
    if wave.dim() == 1:
        wave = wave.unsqueeze(0)
    if wave.dim() != 2:
        raise ValueError(f"expected a wave of shape (N,) or (B, N), got {tuple(wave.shape)}")
    if pad_to_30s:
        wave = _pad_or_crop(wave, CHUNK_SAMPLES)
    elif wave.shape[1] < HOP_LENGTH:
        raise ValueError(f"a wave of {wave.shape[1]} samples is shorter than one hop ({HOP_LENGTH}); no frames")
    return _log_mel(wave, whisper_mel_filters(n_mels).to(wave.device))


def _pad_or_crop(wave: torch.Tensor, length: int) -> torch.Tensor:
    if wave.shape[1] >= length:
        return wave[:, :length]
    return torch.nn.functional.pad(wave, (0, length - wave.shape[1]))


class WhisperLogMel(AbsFrontend):
    """ESPnet front end computing Whisper's log-mel features (no trainable parameters).

    ``forward(wave (B, N), wave_lengths (B,)) -> (feats (B, T, n_mels), feats_lengths)``.
    With ``pad_to_30s`` every item is Whisper's 3000-frame window and
    ``feats_lengths`` counts its valid frames (``min(N_b // 160, 3000)``);
    without it each item is computed from its own samples and zero-padded to
    the longest item.
    """

    def __init__(self, n_mels: int = 80, pad_to_30s: bool = False) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.pad_to_30s = pad_to_30s
        self.register_buffer("mel_filters", whisper_mel_filters(n_mels), persistent=False)

    def output_size(self) -> int:
        return self.n_mels

    def forward(self, input: torch.Tensor, input_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if input.dim() != 2 or input_lengths.shape != (input.shape[0],):
            raise ValueError(
                f"expected wave (B, N) and lengths (B,), got {tuple(input.shape)} and {tuple(input_lengths.shape)}"
            )
        feats_lengths = num_frames(input_lengths, self.pad_to_30s)
        if bool((feats_lengths < 1).any()):
            bad = input_lengths[feats_lengths < 1].tolist()
            raise ValueError(f"waves shorter than one hop ({HOP_LENGTH} samples) have no frames: lengths {bad}")
        if self.pad_to_30s:
            positions = torch.arange(input.shape[1], device=input.device)
            wave = input.masked_fill(positions >= input_lengths[:, None], 0.0)
            return _log_mel(_pad_or_crop(wave, CHUNK_SAMPLES), self.mel_filters), feats_lengths
        items = [_log_mel(input[b : b + 1, : int(n)], self.mel_filters)[0] for b, n in enumerate(input_lengths)]
        return torch.nn.utils.rnn.pad_sequence(items, batch_first=True), feats_lengths
