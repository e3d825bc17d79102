"""Encoder-decoder connector (paper Eqs. 2-4): gated cross-attention after every LLM self-attention.

``S = ReLU(Linear(H))`` (stacked Whisper frames -> LLM width; γ lives in this S space), then in
layer i ``S_i = ReLU(Linear_i(S))`` (-> 1024) and
``H_i = H_i + tanh(g_i) · XATT_i(H_i, S_i, S_i)``, inserted after the self-attention residual add
and before the post-attention norm and FFN. XATT has 8 heads at width 1024 (q: LLM width -> 1024,
k/v: 1024 -> 1024, out: 1024 -> LLM width); ``g_i = gate_init`` (0 in the paper, so the model
starts as the plain LLM).

Query choice: XATT reads an RMS-normalised ``H_i`` (one RMSNorm per layer, like the pre-norm
in front of every other Glm sub-layer). Eq. 4 writes ``H_i``; ChatGLM's residual stream grows to
large magnitudes in deep layers, and an un-normalised query would make the attention logits
scale with them. The norms add 28·4096 parameters (0.03% of the 437.6M).

Segment embeddings (``segment_embeddings: N``; 0, the paper's model, by default): cross-attention
reads the speech tokens as a set, so only their content tells them apart. The paper encodes history
and current audio in one 30-s Whisper window, whose positions mark which utterance a frame belongs
to; this recipe encodes (and caches) each utterance on its own, so every segment starts at Whisper's
position 0 and, with history, the model cannot tell the current utterance from the previous ones
(after ``|sep|`` it transcribes a history utterance again). N learned vectors added to the speech
tokens, by distance from the current utterance (0 current, 1 previous, … N-1 and older), restore
that information (the mini recipe's dev CER with 2 history utterances: 41.8% without, 3.4% with).

The speech keys/values of every layer are computed once per utterance (:meth:`memory`) and
handed to the LLM as the ``speech_memory`` keyword of each forward call, which transformers
passes on to every decoder layer. Nothing is stored on the modules, so KV-cache generation,
beam reordering (:meth:`SpeechMemory.index_select`) and training share one code path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.glm.modeling_glm import GlmDecoderLayer, GlmRMSNorm

from espnet2_ext.speechllm.connectors.base import SpeechConnector


class GatedCrossAttention(nn.Module):
    """One layer's ``Linear_i``, ``XATT_i`` and gate ``g_i``."""

    def __init__(
        self,
        llm_hidden: int,
        attention_dim: int = 1024,
        num_heads: int = 8,
        gate_init: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if attention_dim % num_heads:
            raise ValueError(f"attention_dim {attention_dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.speech_proj = nn.Linear(llm_hidden, attention_dim)
        self.query_norm = GlmRMSNorm(llm_hidden, eps=norm_eps)
        self.query = nn.Linear(llm_hidden, attention_dim)
        self.key = nn.Linear(attention_dim, attention_dim)
        self.value = nn.Linear(attention_dim, attention_dim)
        self.out = nn.Linear(attention_dim, llm_hidden)
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def speech_key_value(self, speech: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, llm_hidden) speech tokens S -> keys and values (B, heads, L, head_dim)."""
        speech_i = torch.relu(self.speech_proj(speech))
        return self._heads(self.key(speech_i)), self._heads(self.value(speech_i))

    def forward(
        self, hidden: torch.Tensor, key: torch.Tensor, value: torch.Tensor, speech_mask: torch.Tensor
    ) -> torch.Tensor:
        """The gated update ``tanh(g) · XATT(H, S_i, S_i)`` for hidden (B, T, llm_hidden)."""
        query = self._heads(self.query(self.query_norm(hidden)))
        attended = nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=speech_mask[:, None, None, :]
        )
        attended = attended.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[1], -1)
        return torch.tanh(self.gate) * self.out(attended)


@dataclass
class SpeechMemory:
    """Per-layer speech keys/values of a batch, computed once and reused at every decoding step."""

    blocks: nn.ModuleList
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor  # (B, L) True where a speech token is real

    def attend(self, layer_idx: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.blocks[layer_idx](hidden, self.keys[layer_idx], self.values[layer_idx], self.mask)

    def index_select(self, index: torch.Tensor) -> "SpeechMemory":
        """Reorder/expand the batch (e.g. for beams)."""
        return SpeechMemory(
            self.blocks,
            [k.index_select(0, index) for k in self.keys],
            [v.index_select(0, index) for v in self.values],
            self.mask.index_select(0, index),
        )


class CrossAttentionDecoderLayer(GlmDecoderLayer):
    """A Glm decoder layer that adds ``speech_memory.attend`` after its self-attention residual add.

    It takes over the submodules of an existing layer (parameter names unchanged) and behaves
    exactly like it when called without ``speech_memory``.
    """

    @classmethod
    def from_layer(cls, layer: GlmDecoderLayer) -> "CrossAttentionDecoderLayer":
        config = layer.self_attn.config
        with torch.device("meta"):
            new = cls(config, layer.self_attn.layer_idx)
        for name, child in layer.named_children():
            setattr(new, name, child)
        new.train(layer.training)
        return new

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        speech_memory: SpeechMemory | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = residual + hidden_states
        if speech_memory is not None:
            hidden_states = hidden_states + speech_memory.attend(self.self_attn.layer_idx, hidden_states)
        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + hidden_states


class CrossAttentionConnector(SpeechConnector):
    """``S = ReLU(Linear(H))`` plus one :class:`GatedCrossAttention` per LLM layer."""

    def __init__(
        self,
        input_size: int,
        llm_hidden: int,
        num_layers: int,
        stack: int = 5,
        attention_dim: int = 1024,
        num_heads: int = 8,
        gate_init: float = 0.0,
        norm_eps: float = 1e-5,
        segment_embeddings: int = 0,
    ) -> None:
        super().__init__(input_size, llm_hidden, stack)
        self.proj = nn.Linear(stack * input_size, llm_hidden)
        self._add_segment_embeddings(segment_embeddings)
        self.blocks = nn.ModuleList(
            GatedCrossAttention(llm_hidden, attention_dim, num_heads, gate_init, norm_eps)
            for _ in range(num_layers)
        )

    @classmethod
    def build(cls, input_size: int, llm_config, **conf) -> "CrossAttentionConnector":
        """One cross-attention per LLM layer, query norm with the LLM's epsilon."""
        conf.setdefault("norm_eps", llm_config.rms_norm_eps)
        return cls(input_size, llm_config.hidden_size, llm_config.num_hidden_layers, **conf)

    def project(self, stacked: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.proj(stacked))

    def memory(self, speech: torch.Tensor, speech_lengths: torch.Tensor) -> SpeechMemory:
        """Keys/values of every layer for speech tokens (B, L, llm_hidden) with lengths (B,)."""
        keys, values = zip(*(block.speech_key_value(speech) for block in self.blocks))
        mask = torch.arange(speech.size(1), device=speech.device)[None, :] < speech_lengths[:, None]
        return SpeechMemory(self.blocks, list(keys), list(values), mask)

    def attach(self, llm: nn.Module) -> None:
        """Turn the decoder layers of a GlmForCausalLM into :class:`CrossAttentionDecoderLayer`s."""
        layers = llm.model.layers
        if len(layers) != len(self.blocks):
            raise ValueError(f"connector has {len(self.blocks)} cross-attention layers, LLM has {len(layers)}")
        for index, layer in enumerate(layers):
            if not isinstance(layer, CrossAttentionDecoderLayer):
                layers[index] = CrossAttentionDecoderLayer.from_layer(layer)
