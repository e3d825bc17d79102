"""What both connectors share: segment-wise 5-frame stacking, a projection, and the γ token.

The model hands a connector the encoder output of each batch item as a sequence of segments
(history utterances, then the current one). Each segment is stacked on its own (its tail
padded with zeros), so a stacked frame never mixes two utterances and γ sits exactly at the
boundary before the current segment when there is history. A connector may also hold segment
embeddings (``segment_embeddings: N`` in either connector's conf; why, see :mod:`cross_attention`):
learned vectors added to the tokens of the current segment, the one before it, and so on.
"""

from __future__ import annotations

import abc

import torch
from torch import nn


def stack_frames(frames: torch.Tensor, stack: int) -> torch.Tensor:
    """(T, D) -> (ceil(T / stack), stack * D): concatenate every ``stack`` adjacent frames."""
    length, dim = frames.shape
    pad = (-length) % stack
    if pad:
        frames = torch.cat([frames, frames.new_zeros(pad, dim)])
    return frames.reshape(-1, stack * dim)


class SpeechConnector(nn.Module, abc.ABC):
    """Maps encoder frames to speech tokens ``S`` of the LLM width, with γ before the current segment."""

    def __init__(self, input_size: int, llm_hidden: int, stack: int) -> None:
        super().__init__()
        if stack < 1:
            raise ValueError(f"stack must be >= 1, got {stack}")
        self.input_size = input_size
        self.llm_hidden = llm_hidden
        self.stack = stack
        self.gamma = nn.Parameter(torch.randn(llm_hidden) * 0.02)
        # Row k is added to the tokens of the segment k utterances before the current one (the last row
        # also to older ones); None: no segment embeddings.
        self.segment_embedding: nn.Embedding | None = None

    def _add_segment_embeddings(self, count: int) -> None:
        """``count`` learned vectors, by distance from the current segment (0: none, the paper's models)."""
        if count < 0:
            raise ValueError(f"segment_embeddings must be >= 0, got {count}")
        if count:
            self.segment_embedding = nn.Embedding(count, self.llm_hidden)
            nn.init.normal_(self.segment_embedding.weight, std=0.02)

    @classmethod
    def build(cls, input_size: int, llm_config, **conf) -> "SpeechConnector":
        """Construct for an encoder of ``input_size`` dims and an LLM with config ``llm_config``."""
        return cls(input_size, llm_config.hidden_size, **conf)

    @abc.abstractmethod
    def project(self, stacked: torch.Tensor) -> torch.Tensor:
        """(N, stack * input_size) -> (N, llm_hidden)."""

    def forward(
        self,
        frames: torch.Tensor,
        segment_lengths: torch.Tensor,
        num_segments: torch.Tensor,
        num_history: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Speech tokens for a batch.

        Args:
            frames: (B, T, input_size) encoder output; item b's segments lie back to back from frame 0.
            segment_lengths: (B, N) frames per segment (entries past ``num_segments[b]`` ignored).
            num_segments: (B,) number of segments of each item.
            num_history: (B,) how many leading segments are history (γ is inserted after them when > 0).
        Returns:
            (B, L, llm_hidden) speech tokens, right-padded with zeros, and their lengths (B,).
        """
        if frames.size(-1) != self.input_size:
            raise ValueError(f"connector expects {self.input_size}-dim frames, got {frames.size(-1)}")
        pieces: list[torch.Tensor] = []
        layout: list[list[int]] = []  # per item: stacked-token count of each segment
        for b in range(frames.size(0)):
            n_seg, n_hist = int(num_segments[b]), int(num_history[b])
            if not 0 <= n_hist < n_seg:
                raise ValueError(f"batch item {b}: {n_hist} history segments but {n_seg} segments")
            start, counts = 0, []
            for length in segment_lengths[b, :n_seg].tolist():
                if length <= 0:
                    raise ValueError(f"batch item {b}: empty speech segment")
                stacked = stack_frames(frames[b, start : start + length], self.stack)
                pieces.append(stacked)
                counts.append(stacked.size(0))
                start += length
            if start > frames.size(1):
                raise ValueError(f"batch item {b}: segments cover {start} frames, only {frames.size(1)} given")
            layout.append(counts)
        tokens = self.project(torch.cat(pieces)).split([c for counts in layout for c in counts])
        sequences: list[torch.Tensor] = []
        for b, counts in enumerate(layout):
            segs = list(tokens[: len(counts)])
            tokens = tokens[len(counts) :]
            if self.segment_embedding is not None:
                rows = self.segment_embedding.weight
                segs = [seg + rows[min(len(segs) - 1 - j, rows.size(0) - 1)] for j, seg in enumerate(segs)]
            n_hist = int(num_history[b])
            if n_hist > 0:
                segs.insert(n_hist, self.gamma.to(segs[0].dtype).unsqueeze(0))
            sequences.append(torch.cat(segs))
        lengths = torch.tensor([s.size(0) for s in sequences], device=frames.device)
        return nn.utils.rnn.pad_sequence(sequences, batch_first=True), lengths
