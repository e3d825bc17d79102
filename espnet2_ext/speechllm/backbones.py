"""The frozen pretrained parts as ESPnet class choices: speech encoders and the LLM source.

``--encoder whisper`` runs the frozen Whisper encoder on log-mel input; ``--encoder precomputed``
takes encoder outputs dumped once by the recipe (the frozen encoder gives the same frames every
epoch, so running it again is wasted work). Both report how input-frame boundaries map to
output frames, so the model can find each concatenated utterance in the encoder output.
``meta=True`` builds on the meta device from the config alone (parameter counting). Real weights
are read straight into the dtype and onto the device the task asks for (``frozen_dtype``; the
training GPU), one memory-mapped shard at a time.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GlmForCausalLM

from espnet2_ext.speechllm.chatglm3 import load_chatglm3
from espnet2_ext.speechllm.frontend import HOP_LENGTH, SAMPLE_RATE
from espnet2_ext.speechllm.whisper_encoder import (
    FrozenWhisperEncoder,
    encoder_output_lengths,
    load_whisper_config,
    load_whisper_encoder,
)


class PrecomputedEncoder(nn.Module):
    """Identity over cached encoder outputs (T', output_size)."""

    frames_per_second = SAMPLE_RATE / HOP_LENGTH / 2  # Whisper's encoder output: 50 frames per second

    def __init__(self, output_size: int = 1280) -> None:
        super().__init__()
        self._output_size = output_size

    def output_size(self) -> int:
        return self._output_size

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return lengths

    def forward(self, feats: torch.Tensor, feats_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if feats.size(-1) != self._output_size:
            raise ValueError(
                f"precomputed encoder output has {feats.size(-1)} dims, config says output_size={self._output_size}"
            )
        return feats, feats_lengths


class WhisperSpeechEncoder(nn.Module):
    """The frozen Whisper encoder on log-mel (T, n_mels) input; output frame rate is half the input's.

    ``output_size``, when a config states it (as the ``precomputed`` configs do), must match the
    checkpoint's width: the same YAML then serves cached outputs and log-mel input alike.
    """

    frames_per_second = SAMPLE_RATE / HOP_LENGTH  # log-mel input: 100 frames per second

    def __init__(
        self,
        path: str,
        pad_to_30s: bool = True,
        output_size: int | None = None,
        meta: bool = False,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        if meta:
            with torch.device("meta"):
                self.whisper = FrozenWhisperEncoder(load_whisper_config(path), pad_to_30s=pad_to_30s).to(dtype)
        else:
            self.whisper = load_whisper_encoder(path, pad_to_30s=pad_to_30s, dtype=dtype, device=device)
        if output_size is not None and output_size != self.whisper.config.d_model:
            raise ValueError(
                f"encoder_conf output_size={output_size} but the Whisper checkpoint {path} has d_model "
                f"{self.whisper.config.d_model}"
            )

    def output_size(self) -> int:
        return self.whisper.config.d_model

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return encoder_output_lengths(lengths)

    def forward(self, feats: torch.Tensor, feats_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.whisper(feats, feats_lengths)


class ChatGLM3Source:
    """Where the base LLM comes from (``--llm chatglm3 --llm_conf path=DIR``); :meth:`load` builds it.

    ``dtype`` (optional) overrides the dtype the task would choose for the LLM (``frozen_dtype``;
    fp32 when the whole LLM trains), e.g. for decoding in bfloat16 a model trained in fp32.
    """

    def __init__(self, path: str, dtype: str | None = None) -> None:
        self.path = path
        self.dtype = None if dtype is None else getattr(torch, dtype)

    def load(
        self, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", meta: bool = False
    ) -> GlmForCausalLM:
        return load_chatglm3(self.path, dtype=self.dtype or dtype, device=device, meta=meta)
