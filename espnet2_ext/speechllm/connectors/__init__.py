"""Connectors between the speech encoder and the LLM (paper Fig. 1)."""

from espnet2_ext.speechllm.connectors.adapter import AdapterConnector
from espnet2_ext.speechllm.connectors.base import SpeechConnector, stack_frames
from espnet2_ext.speechllm.connectors.cross_attention import (
    CrossAttentionConnector,
    CrossAttentionDecoderLayer,
    GatedCrossAttention,
    SpeechMemory,
)

__all__ = [
    "AdapterConnector",
    "CrossAttentionConnector",
    "CrossAttentionDecoderLayer",
    "GatedCrossAttention",
    "SpeechConnector",
    "SpeechMemory",
    "stack_frames",
]
