"""Decoder-only connector (paper Eq. 1): speech tokens ``S = Linear(ReLU(Linear(H)))`` fed as LLM inputs.

``H`` is the encoder output with every 5 adjacent frames stacked (1280 x 5 = 6400 for
Whisper-large-v2). Full size: 6400·4096+4096 + 4096·4096+4096 = 43.0M, plus the 4096-wide γ.

``segment_embeddings: N`` (0, the paper's model, by default) adds learned vectors to the speech tokens by
distance from the current utterance, as in :mod:`cross_attention`: the paper encodes history and current audio
in one Whisper window, whose positions tell the segments apart, while this recipe encodes each utterance on its
own and γ marks only the boundary before the current one. (The mini decoder-only model did not gain from them
on dev: x3 in its RESULTS.md.)
"""

from __future__ import annotations

import torch
from torch import nn

from espnet2_ext.speechllm.connectors.base import SpeechConnector


class AdapterConnector(SpeechConnector):
    """Two linear layers with a ReLU between them, mapping stacked frames into the LLM embedding space."""

    def __init__(
        self, input_size: int, llm_hidden: int, stack: int = 5, hidden_size: int = 4096, segment_embeddings: int = 0
    ) -> None:
        super().__init__(input_size, llm_hidden, stack)
        self.layers = nn.Sequential(
            nn.Linear(stack * input_size, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, llm_hidden),
        )
        self._add_segment_embeddings(segment_embeddings)

    def project(self, stacked: torch.Tensor) -> torch.Tensor:
        return self.layers(stacked)
