"""Predicted peak GPU memory of one training step of a speech-LLM config, before anything is loaded.

peak = weights + trainable states + activations + reserve, per GPU:

* **weights**: every parameter in the dtype it is held in (frozen ones in ``frozen_dtype``,
  trainable ones in fp32), counted on the model built on the meta device from the configs;
* **trainable states**: fp32 gradients and the optimizer's states (Adam/AdamW: two fp32 moments),
  the autocast copies of the trainable weights (bf16, kept for the forward pass), and DDP's
  gradient buckets when ``gradient_as_bucket_view`` is off;
* **activations** at the config's token budget (``batch_bins`` LLM tokens per batch, padding
  included): what autograd saves per token in every LLM layer (an op-by-op count of the Glm layer
  with LoRA, the cross-attention block, attention through SDPA with a padding mask), the connector
  and the head, plus the transients of the backward pass (one layer's gradients, the cross-entropy
  over the vocabulary). With activation checkpointing each layer keeps only its input, one layer
  is recomputed at a time, and the head runs in chunks of ``LOSS_CHUNK`` positions;
* **reserve**: CUDA context, cuBLAS workspaces and allocator fragmentation (a fixed 3 GiB and
  5% of the rest).

Per-token terms follow the kernels' saved tensors: on a GPU dropout keeps a 1-byte mask; on the
CPU (where the model is checked, ``tests/test_memory_plan.py``) it keeps a mask in the input's
dtype, which peft casts to fp32 before LoRA's dropout. The composition of a batch is its worst
case under the budget: ``B × T = batch_bins`` computed tokens, at most ``max_text_fraction`` of
them text (the encoder-decoder's LLM sequence) and ``T`` at most one whole example.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch
from torch import nn

from espnet2_ext.speechllm.espnet_model import LOSS_CHUNK, SpeechLLMModel
from espnet2_ext.speechllm.lora import resolve_lora_conf

GIB = 2**30
RESERVE_BYTES = 3 * GIB
RESERVE_FRACTION = 0.05
OPTIMIZER_STATE_BYTES = {"adam": 8, "adamw": 8, "sgd": 4, "adagrad": 4, "rmsprop": 4}  # per fp32 parameter


@dataclass(frozen=True)
class ModelShape:
    """What the activation model needs to know about a config's model."""

    hidden: int
    ffn: int
    layers: int
    heads: int
    head_dim: int
    vocab: int
    finetune: str  # lora | full | frozen
    lora_r: int
    lora_targets: frozenset[str]
    lora_dropout: bool
    cross_attention: bool
    xatt_dim: int
    xatt_heads: int
    stack: int
    encoder_dim: int
    adapter_hidden: int
    act_bytes: int  # activation element size: 2 under bf16/fp16 autocast, 4 in fp32
    whisper_layers: int = 0  # frozen Whisper run inside training (encoder: whisper), else 0
    whisper_ffn: int = 0


@dataclass(frozen=True)
class BatchShape:
    """A padded batch: B sequences of T LLM positions, S speech tokens each (cross-attention memory), N targets.

    ``sequences`` may be fractional: the budget's worst case is ``B × T = batch_bins`` exactly.
    """

    sequences: float
    llm_len: int
    speech_len: int
    targets: int


def model_shape(model: SpeechLLMModel, args: argparse.Namespace) -> ModelShape:
    """Read the shape from a (meta) model and its training arguments."""
    config = model.llm.config
    lora = args.llm_finetune == "lora"
    lora_conf = resolve_lora_conf(args.lora_conf)[0] if lora else {}
    connector = model.connector
    whisper = getattr(model.encoder, "whisper", None)
    adapter_hidden = connector.layers[0].out_features if hasattr(connector, "layers") else 0
    xatt = connector.blocks[0] if model.uses_cross_attention else None
    return ModelShape(
        hidden=config.hidden_size, ffn=config.intermediate_size, layers=config.num_hidden_layers,
        heads=config.num_attention_heads, head_dim=config.head_dim, vocab=config.vocab_size,
        finetune=args.llm_finetune, lora_r=lora_conf.get("r", 0),
        lora_targets=frozenset(lora_conf.get("target_modules", ())), lora_dropout=lora_conf.get("lora_dropout", 0) > 0,
        cross_attention=model.uses_cross_attention,
        xatt_dim=xatt.query.out_features if xatt else 0, xatt_heads=xatt.num_heads if xatt else 0,
        stack=connector.stack, encoder_dim=connector.input_size, adapter_hidden=adapter_hidden,
        act_bytes=2 if model.compute_dtype != torch.float32 else 4,
        whisper_layers=whisper.config.encoder_layers if whisper is not None else 0,
        whisper_ffn=whisper.config.encoder_ffn_dim if whisper is not None else 0,
    )


def _lora_bytes(s: ModelShape, in_features: int, device: str) -> int:
    """Saved per token by one LoRA branch: dropout mask, lora_A's (cast) input, lora_B's input."""
    mask = (1 if device == "cuda" else 4) if s.lora_dropout else 0
    return in_features * (mask + s.act_bytes) + s.lora_r * s.act_bytes


def layer_bytes_per_token(s: ModelShape, llm_len: int, device: str) -> int:
    """Bytes autograd keeps per LLM position in one decoder layer (the cross-attention block's query side included)."""
    a, h, f = s.act_bytes, s.hidden, s.ffn
    attn = s.heads * s.head_dim
    full = s.finetune == "full"
    total = 2 * (4 * h + 4)  # two RMSNorms: fp32 input, 1/rms
    total += 4 * attn * a + 4 * s.heads + llm_len * a  # SDPA: q, repeated k and v, output, logsumexp; float mask
    total += 3 * f * a  # SwiGLU: gate|up output, activation output
    if full:  # by the same rules, not measured: trainable projections and norm weights keep their inputs
        total += (3 * h + attn + f) * a + 2 * h * a
    if s.finetune == "lora":
        inputs = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": attn, "gate_up_proj": h, "down_proj": f}
        total += sum(_lora_bytes(s, inputs[name], device) for name in s.lora_targets if name in inputs)
    if s.cross_attention:
        d = s.xatt_dim
        total += 4 * h + 4 + 3 * h * a + 3 * d * a + 4 * s.xatt_heads  # norm, query, SDPA, out, gate
    return total


def speech_bytes_per_token(s: ModelShape) -> int:
    """Bytes kept per speech token by the connector (and, cross-attention, by every layer's keys/values)."""
    a = s.act_bytes
    if s.cross_attention:
        return a * (s.stack * s.encoder_dim + s.hidden) + s.layers * 3 * s.xatt_dim * a
    return a * (s.stack * s.encoder_dim + s.adapter_hidden)


def activation_bytes(s: ModelShape, batch: BatchShape, checkpointing: bool, device: str) -> int:
    """Peak activation bytes of one forward + backward on ``batch``: what is saved, plus the larger backward transient.

    The backward pass first runs the head (cross-entropy over the vocabulary), then the layers one by
    one; the peak is the saved tensors plus the larger of the two transients. With checkpointing the
    saved tensors are the layer inputs, and a layer's transient includes its recomputed activations.
    """
    a, h, v = s.act_bytes, s.hidden, s.vocab
    tokens = math.ceil(batch.sequences * batch.llm_len)
    speech = math.ceil(batch.sequences * batch.speech_len)
    per_layer = layer_bytes_per_token(s, batch.llm_len, device)
    saved = tokens * (4 * h + 4) + tokens * batch.llm_len  # final norm, the shared bool mask (B × T × T)
    saved += batch.targets * a * h + speech * speech_bytes_per_token(s)  # head input, connector
    layer_grads = tokens * (4 * h + 3 * s.ffn) * a  # gradients flowing through one layer
    if checkpointing:
        saved += s.layers * tokens * h * a  # every layer's input
        head = min(batch.targets, LOSS_CHUNK) * v * (12 + a)  # one chunk recomputed: softmax output, gradients
        layer = tokens * per_layer + layer_grads  # one layer recomputed, its gradients
    else:
        saved += s.layers * tokens * per_layer + batch.targets * v * 4  # all layers, log-softmax output
        head = batch.targets * v * 8  # gradients of the log-softmax input and output
        layer = layer_grads
    whisper = 0
    if s.whisper_layers:  # no grad: one layer's working set over 30-s windows
        whisper = math.ceil(batch.sequences) * 1500 * (4 * s.encoder_dim + s.whisper_ffn) * a
    return int(saved + max(head, layer, whisper))


def worst_batch(s: ModelShape, budget: int, max_example: int, max_text_fraction: float) -> BatchShape:
    """The most demanding batch a token budget allows: one long example's length, the text share at its bound."""
    length = min(budget, max_example)
    sequences = budget / length
    text = math.ceil(length * max_text_fraction)
    if s.cross_attention:  # the LLM sees the text; the speech tokens are the cross-attention memory
        return BatchShape(sequences, text, length - text, math.ceil(sequences * text))
    return BatchShape(sequences, length, 0, math.ceil(sequences * text))


def parameter_bytes(model: nn.Module) -> tuple[int, int, int]:
    """(frozen bytes, trainable bytes, trainable count) of a model, meta tensors included."""
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return frozen, sum(p.numel() * p.element_size() for p in trainable), sum(p.numel() for p in trainable)


def plan(
    model: SpeechLLMModel,
    args: argparse.Namespace,
    gpu_mem_gib: float,
    world_size: int,
    max_example: int,
    max_text_fraction: float,
) -> dict:
    """The planner's JSON: peak per GPU with its parts, whether it fits, and the largest budget that fits."""
    shape = model_shape(model, args)
    frozen, trainable_bytes, trainable = parameter_bytes(model)
    optimizer = OPTIMIZER_STATE_BYTES.get(args.optim, 8)
    states = trainable * (4 + optimizer) + (trainable * shape.act_bytes if shape.act_bytes < 4 else 0)
    if world_size > 1 and not getattr(args, "gradient_as_bucket_view", True):
        states += trainable * 4
    fixed = frozen + trainable_bytes + states
    budget = args.batch_bins if args.batch_type == "token_budget" else None
    checkpointing = bool(getattr(args, "activation_checkpointing", False))

    def activations(tokens: int, ckpt: bool) -> int:
        return activation_bytes(shape, worst_batch(shape, tokens, max_example, max_text_fraction), ckpt, "cuda")

    def peak(tokens: int) -> float:
        used = fixed + activations(tokens, checkpointing)
        return (used * (1 + RESERVE_FRACTION) + RESERVE_BYTES) / GIB

    limit = gpu_mem_gib
    largest = 0
    if peak(1) <= limit:
        low, high = 1, 1 << 24
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if peak(mid) <= limit else (low, mid - 1)
        largest = low
    result = {
        "config": getattr(args, "config", None),
        "gpu_mem_gib": gpu_mem_gib,
        "world_size": world_size,
        "batch_bins": budget,
        "activation_checkpointing": checkpointing,
        "weights_gib": round((frozen + trainable_bytes) / GIB, 2),
        "trainable_and_optimizer_gib": round(states / GIB, 2),
        "largest_fitting_batch_bins": largest,
        "reserve_gib": round(RESERVE_BYTES / GIB, 2),
    }
    if budget is not None:
        result["activations_gib"] = {
            "with_checkpointing": round(activations(budget, True) / GIB, 2),
            "without_checkpointing": round(activations(budget, False) / GIB, 2),
        }
        result["peak_gib"] = round(peak(budget), 2)
        result["fits"] = result["peak_gib"] <= gpu_mem_gib
    return result

