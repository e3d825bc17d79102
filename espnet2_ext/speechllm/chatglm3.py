"""ChatGLM3 run natively as transformers' ``GlmForCausalLM`` (no remote code).

ChatGLM3's remote modelling code does not run on transformers 5, but its
architecture is GLM's: RMSNorm, fused qkv with multi-query groups, RoPE on the
first half of each head's dims in interleaved pairs, SwiGLU (gate first),
untied output layer. Only names and the fused qkv differ, so a checkpoint in
ChatGLM3's layout (``config.json`` with ``model_type: chatglm`` and
``transformer.*`` tensors) is converted on load; a directory already written by
``GlmForCausalLM.save_pretrained`` (``model_type: glm``) loads as it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from transformers import GlmConfig, GlmForCausalLM
from transformers.models.glm.modeling_glm import GlmRotaryEmbedding

from espnet2_ext.checkpoint_io import assign_checked, checkpoint_names, iter_checkpoint

# ChatGLM3 -> GLM tensor names outside the layers, and inside layer N.
_TOP_NAMES = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_QKV = "self_attention.query_key_value"
_DROPPED = {"transformer.rotary_pos_emb.inv_freq"}
_CHATGLM_LAYER = re.compile(r"transformer\.encoder\.layers\.(\d+)\.(.+)")
_GLM_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")

# (field, value GLM requires) pairs that ChatGLM3 configs may set otherwise.
_REQUIRED = (
    ("add_bias_linear", False),
    ("original_rope", True),
    ("pre_seq_len", None),
    ("apply_residual_connection_post_layernorm", False),
    ("rmsnorm", True),
    ("post_layer_norm", True),
)
_NEEDED_FIELDS = (
    "padded_vocab_size", "hidden_size", "ffn_hidden_size", "num_layers", "num_attention_heads",
    "kv_channels", "layernorm_epsilon", "seq_length", "add_qkv_bias",
)  # fmt: skip


def _kv_heads(cfg: Mapping) -> int:
    return cfg["multi_query_group_num"] if cfg.get("multi_query_attention", False) else cfg["num_attention_heads"]


def chatglm3_config_to_glm(cfg: Mapping) -> GlmConfig:
    """GlmConfig for a ChatGLM3 ``config.json`` dict; every field set (GlmConfig's defaults are GLM-4's)."""
    missing = [f for f in _NEEDED_FIELDS if f not in cfg]
    if cfg.get("multi_query_attention", False) and "multi_query_group_num" not in cfg:
        missing.append("multi_query_group_num")
    if missing:
        raise ValueError(f"ChatGLM3 config lacks {missing}")
    unsupported = [f"{k}={cfg.get(k, v)!r} (need {v!r})" for k, v in _REQUIRED if cfg.get(k, v) != v]
    if unsupported:
        raise ValueError(f"unsupported ChatGLM3 config for GlmForCausalLM: {', '.join(unsupported)}")
    heads, kv_heads = cfg["num_attention_heads"], _kv_heads(cfg)
    if heads % kv_heads:
        raise ValueError(f"num_attention_heads {heads} is not a multiple of the {kv_heads} key/value groups")
    return GlmConfig(
        vocab_size=cfg["padded_vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["ffn_hidden_size"],
        num_hidden_layers=cfg["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=cfg["kv_channels"],
        hidden_act="silu",
        attention_dropout=float(cfg.get("attention_dropout", 0.0)),
        max_position_embeddings=cfg["seq_length"],
        initializer_range=0.02,
        rms_norm_eps=cfg["layernorm_epsilon"],
        use_cache=True,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0 * cfg.get("rope_ratio", 1),
            "partial_rotary_factor": 0.5,
        },
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=None,
        attention_bias=cfg["add_qkv_bias"],
    )


def _expected_chatglm3_keys(cfg: Mapping) -> set[str]:
    layer_keys = [*_LAYER_NAMES, f"{_QKV}.weight"] + ([f"{_QKV}.bias"] if cfg["add_qkv_bias"] else [])
    per_layer = {f"transformer.encoder.layers.{i}.{k}" for i in range(cfg["num_layers"]) for k in layer_keys}
    return set(_TOP_NAMES) | per_layer


def check_chatglm3_names(names: Iterable[str], cfg: Mapping) -> None:
    """Refuse a ChatGLM3 checkpoint whose tensor names are not exactly those ``cfg`` implies."""
    present = set(names) - _DROPPED
    expected = _expected_chatglm3_keys(cfg)
    missing, unexpected = sorted(expected - present), sorted(present - expected)
    if missing or unexpected:
        raise ValueError(f"ChatGLM3 checkpoint: missing keys {missing[:20]}; unexpected keys {unexpected[:20]}")


def convert_chatglm3_tensor(name: str, tensor: torch.Tensor, cfg: Mapping) -> list[tuple[str, torch.Tensor]]:
    """One ChatGLM3 tensor as ``GlmForCausalLM`` tensors (the fused qkv splits rows ``[heads*hd | kv*hd | kv*hd]``)."""
    if name in _DROPPED:
        return []
    if name in _TOP_NAMES:
        return [(_TOP_NAMES[name], tensor)]
    layer, rest = _CHATGLM_LAYER.fullmatch(name).groups()
    prefix = f"model.layers.{layer}."
    if not rest.startswith(_QKV):
        return [(prefix + _LAYER_NAMES[rest], tensor)]
    head_dim = cfg["kv_channels"]
    q_rows, kv_rows = cfg["num_attention_heads"] * head_dim, _kv_heads(cfg) * head_dim
    if tensor.shape[0] != q_rows + 2 * kv_rows:
        raise ValueError(
            f"ChatGLM3 checkpoint: {name} has {tensor.shape[0]} rows, expected "
            f"{q_rows} + 2 x {kv_rows} (heads x kv_channels + 2 x groups x kv_channels)"
        )
    kind = rest[len(_QKV) + 1 :]
    return [
        (f"{prefix}self_attn.{p}_proj.{kind}", t) for p, t in zip("qkv", tensor.split([q_rows, kv_rows, kv_rows]))
    ]


def convert_chatglm3_state_dict(sd: Mapping[str, torch.Tensor], cfg: Mapping) -> dict[str, torch.Tensor]:
    """ChatGLM3 tensors -> ``GlmForCausalLM`` tensors (see :func:`convert_chatglm3_tensor`)."""
    check_chatglm3_names(sd, cfg)
    return {new: t for name in sorted(sd) for new, t in convert_chatglm3_tensor(name, sd[name], cfg)}


def glm_state_dict_to_chatglm3(sd: Mapping[str, torch.Tensor], cfg: Mapping) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_chatglm3_state_dict` (``cfg`` is the ChatGLM3 config dict)."""
    top = {v: k for k, v in _TOP_NAMES.items()}
    layer_names = {v: k for k, v in _LAYER_NAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in sd.items():
        if name in top:
            out[top[name]] = tensor
            continue
        match = _GLM_LAYER.fullmatch(name)
        if match is None:
            raise ValueError(f"GLM state dict: unexpected key {name}")
        layer, rest = match.groups()
        prefix = f"transformer.encoder.layers.{layer}."
        if rest.startswith("self_attn.q_proj."):
            kind = rest.rsplit(".", 1)[1]
            parts = [sd[f"model.layers.{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{prefix}{_QKV}.{kind}"] = torch.cat(parts, dim=0)
        elif rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
            continue  # fused with q_proj above
        elif rest in layer_names:
            out[prefix + layer_names[rest]] = tensor
        else:
            raise ValueError(f"GLM state dict: unexpected key {name}")
    expected = _expected_chatglm3_keys(cfg)
    if set(out) != expected:
        raise ValueError(f"GLM state dict does not fit the config; missing {sorted(expected - set(out))[:20]}")
    return out


def _read_config_json(path: Path) -> dict:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected a ChatGLM3 or converted GLM directory)")
    cfg = json.loads(config_file.read_text())
    if cfg.get("model_type") not in ("chatglm", "glm"):
        raise ValueError(f"{config_file}: model_type {cfg.get('model_type')!r} is neither 'chatglm' nor 'glm'")
    return cfg


def load_glm_config(path: str | Path) -> GlmConfig:
    """GlmConfig of a ChatGLM3 or converted directory; reads no weights."""
    path = Path(path)
    cfg = _read_config_json(path)
    return GlmConfig.from_pretrained(path) if cfg["model_type"] == "glm" else chatglm3_config_to_glm(cfg)


def load_chatglm3(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", meta: bool = False
) -> GlmForCausalLM:
    """``GlmForCausalLM`` from a ChatGLM3 directory (converted on the fly) or a converted one.

    The model is built on the meta device and every tensor goes straight from its memory-mapped
    shard to ``device`` in ``dtype`` (:func:`~espnet2_ext.checkpoint_io.assign_checked`): loading
    a bf16 6B model onto a GPU holds one shard in host memory at a time, never an fp32 copy.
    ``meta=True`` builds the model on the meta device without reading weights (parameter counting).
    """
    path = Path(path)
    config = load_glm_config(path)
    config.dtype = dtype
    with torch.device("meta"):
        model = GlmForCausalLM(config)
    if meta:
        return model.to(dtype)
    cfg = _read_config_json(path)
    tensors = iter_checkpoint(path)
    if cfg["model_type"] == "chatglm":
        check_chatglm3_names(checkpoint_names(path), cfg)
        tensors = (pair for name, tensor in tensors for pair in convert_chatglm3_tensor(name, tensor, cfg))
    assign_checked(model, tensors, source=str(path), dtype=dtype, device=device)
    # The rotary inverse frequencies are a non-persistent buffer: compute them for real.
    with torch.device(device):
        model.model.rotary_emb = GlmRotaryEmbedding(config)
    return model.eval()
