"""Checkpoint files in the exact layouts upstream projects publish.

Readers: :func:`read_state_dict` (a directory's sharded or single
``pytorch_model*.bin`` / ``model*.safetensors``, ``weights_only``) and
:func:`load_checked_state_dict` (strict key and shape check with an error that
lists what is wrong). Writers of tiny random stand-ins, used by the tests and by
the mini recipe: ChatGLM3 (``config.json`` with ChatGLMConfig fields, ChatGLM3
tensor names, shards + index, ``tokenizer.model``), Hugging Face Whisper
directories and OpenAI Whisper ``.pt`` files.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperModel
from transformers.modeling_utils import load_state_dict as _load_checkpoint_file

# Index files and single files, in order of preference, as transformers writes them.
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
_LISTED = 20


def read_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (sharded with an index json, or one file), on CPU."""
    directory = Path(directory)
    for index_name in _INDEX_FILES:
        index_file = directory / index_name
        if index_file.is_file():
            return _read_sharded(index_file)
    for single in _SINGLE_FILES:
        if (directory / single).is_file():
            return _load_checkpoint_file(directory / single, weights_only=True)
    found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else "not a directory"
    raise FileNotFoundError(
        f"{directory}: no checkpoint ({', '.join(_INDEX_FILES + _SINGLE_FILES)}) found; contents: {found}"
    )


def _read_sharded(index_file: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map: dict[str, str] = json.loads(index_file.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{index_file}: not a checkpoint index with a 'weight_map' ({err})") from err
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_file = index_file.parent / shard
        if not shard_file.is_file():
            raise FileNotFoundError(f"{index_file}: shard {shard} is missing")
        state.update(_load_checkpoint_file(shard_file, weights_only=True))
    not_found = sorted(set(weight_map) - set(state))
    not_indexed = sorted(set(state) - set(weight_map))
    if not_found or not_indexed:
        raise ValueError(
            f"{index_file}: index and shards disagree; in the index but in no shard: "
            f"{_short(not_found)}; in a shard but not in the index: {_short(not_indexed)}"
        )
    return state


def _short(keys: list) -> str:
    shown = ", ".join(map(str, keys[:_LISTED]))
    return f"[{shown}{f', ... ({len(keys)} in all)' if len(keys) > _LISTED else ''}]"


def load_checked_state_dict(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, dtype: torch.dtype | None = None
) -> None:
    """Load ``state`` into ``module`` (possibly on the meta device: tensors are assigned), refusing any
    missing or unexpected key and any shape mismatch, all listed in one error naming ``source``."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{source}: checkpoint does not match the model; missing keys {_short(missing)}; "
            f"unexpected keys {_short(unexpected)}; shape mismatches {_short(mismatched)}"
        )
    cast = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in state.items()}
    module.load_state_dict(cast, strict=True, assign=True)


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


def _save_shards(state: Mapping[str, torch.Tensor], out_dir: Path, shard_size: int, safetensors: bool) -> None:
    """Write ``state`` in shards of at most ``shard_size`` bytes (plus an index when more than one)."""
    stem, ext = ("model", "safetensors") if safetensors else ("pytorch_model", "bin")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.contiguous()
        size += nbytes
    if len(shards) == 1:
        names = [f"{stem}.{ext}"]
    else:
        names = [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{ext}" for i in range(len(shards))]
    for shard, name in zip(shards, names):
        if safetensors:
            save_file(shard, out_dir / name, metadata={"format": "pt"})
        else:
            torch.save(shard, out_dir / name)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {k: name for shard, name in zip(shards, names) for k in shard},
        }
        (out_dir / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2) + "\n")


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
    # Imported here: chatglm3 reads checkpoints with this module's readers.
    from espnet2_ext.speechllm.chatglm3 import glm_state_dict_to_chatglm3

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
    _save_shards(chatglm_state, out_dir, shard_size, safetensors)
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
    # Imported here: whisper_encoder reads checkpoints with this module's readers.
    from espnet2_ext.speechllm.whisper_encoder import hf_whisper_name_to_openai

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
