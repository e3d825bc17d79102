"""Tiny random stand-ins for the upstream checkpoints, written in the exact layouts upstream publishes.

Used by the tests and by the mini recipe: ChatGLM3 (``config.json`` with ChatGLMConfig fields,
ChatGLM3 tensor names, shards + index, ``tokenizer.model``), Hugging Face Whisper directories and
OpenAI Whisper ``.pt`` files. Reading checkpoints is :mod:`espnet2_ext.checkpoint_io`'s job.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperModel

from espnet2_ext.checkpoint_io import save_state_dict_shards
from espnet2_ext.speechllm.chatglm3 import glm_state_dict_to_chatglm3
from espnet2_ext.speechllm.whisper_encoder import hf_whisper_name_to_openai


def tiny_chatglm3_config(
    vocab_size: int = 128,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_groups: int = 2,
    ffn: int = 64,
    seq_length: int = 512,
    rope_ratio: float | None = None,
) -> dict:
    """A ChatGLM3 ``config.json`` dict (ChatGLMConfig fields, ChatGLM3-6B's choices) at toy size."""
    config = {
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "auto_map": {
            "AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        },
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True,
        "ffn_hidden_size": ffn,
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": hidden,
        "kv_channels": hidden // heads,
        "layernorm_epsilon": 1e-05,
        "multi_query_attention": True,
        "multi_query_group_num": kv_groups,
        "num_attention_heads": heads,
        "num_layers": layers,
        "original_rope": True,
        "padded_vocab_size": vocab_size,
        "post_layer_norm": True,
        "rmsnorm": True,
        "seq_length": seq_length,
        "use_cache": True,
        "tie_word_embeddings": False,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    }
    if rope_ratio is not None:
        config["rope_ratio"] = rope_ratio
    return config


def save_chatglm3_checkpoint(
    glm_model_or_state: torch.nn.Module | Mapping[str, torch.Tensor],
    cfg_dict: dict,
    out_dir: str | Path,
    shard_size: int = 2 * 1024**3,
    safetensors: bool = False,
    tokenizer_model: str | Path | None = None,
) -> Path:
    """Write a checkpoint as THUDM/chatglm3-6b publishes it.

    ``glm_model_or_state`` is a ``GlmForCausalLM`` (or its state dict, ``model.*`` names), converted
    back to ChatGLM3 names, or a state dict already in ChatGLM3 names (``transformer.*``).
    """
    state = glm_model_or_state.state_dict() if isinstance(glm_model_or_state, torch.nn.Module) else glm_model_or_state
    if all(k.startswith("transformer.") for k in state):
        chatglm_state = dict(state)
    elif all(k.startswith(("model.", "lm_head.")) for k in state):
        chatglm_state = glm_state_dict_to_chatglm3(state, cfg_dict)
    else:
        raise ValueError(
            "state dict has neither all ChatGLM3 names (transformer.*) nor all GLM names (model.*, lm_head.*)"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(cfg_dict, indent=2) + "\n")
    save_state_dict_shards(chatglm_state, out_dir, shard_size, safetensors)
    if tokenizer_model is not None:
        shutil.copyfile(tokenizer_model, out_dir / "tokenizer.model")
    return out_dir


def tiny_whisper_config(
    n_mels: int = 80, d_model: int = 16, layers: int = 2, heads: int = 2, audio_ctx: int = 1500, vocab_size: int = 64
) -> WhisperConfig:
    """A toy ``WhisperConfig`` (special token ids kept below ``vocab_size``, as the config requires)."""
    special = vocab_size - 1
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_layers=layers,
        decoder_attention_heads=heads,
        encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model,
        max_source_positions=audio_ctx,
        max_target_positions=32,
        pad_token_id=special,
        bos_token_id=special,
        eos_token_id=special,
        decoder_start_token_id=special,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )


def save_whisper_hf(
    config: WhisperConfig, out_dir: str | Path, seed: int = 0, conditional_generation: bool = True
) -> WhisperModel | WhisperForConditionalGeneration:
    """A random Whisper model saved with ``save_pretrained`` (the hub layout); returns the model."""
    torch.manual_seed(seed)
    model = (WhisperForConditionalGeneration if conditional_generation else WhisperModel)(config).eval()
    model.save_pretrained(out_dir)
    return model


def save_whisper_openai_pt(model: WhisperModel | WhisperForConditionalGeneration, out_file: str | Path) -> Path:
    """Write a ``WhisperModel``/``...ForConditionalGeneration`` as OpenAI's ``{"dims", "model_state_dict"}`` .pt."""
    cfg = model.config
    whisper = model.model if isinstance(model, WhisperForConditionalGeneration) else model
    state = {hf_whisper_name_to_openai(k): v.clone() for k, v in whisper.state_dict().items()}
    dims = {
        "n_mels": cfg.num_mel_bins,
        "n_vocab": cfg.vocab_size,
        "n_audio_ctx": cfg.max_source_positions,
        "n_audio_state": cfg.d_model,
        "n_audio_head": cfg.encoder_attention_heads,
        "n_audio_layer": cfg.encoder_layers,
        "n_text_ctx": cfg.max_target_positions,
        "n_text_state": cfg.d_model,
        "n_text_head": cfg.decoder_attention_heads,
        "n_text_layer": cfg.decoder_layers,
    }
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": dims, "model_state_dict": state}, out_file)
    return out_file
