"""ChatGLM3 checkpoints load as GlmForCausalLM and compute what ChatGLM3's own architecture computes."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import GlmForCausalLM

from espnet2_ext.bin import convert_chatglm3
from espnet2_ext.checkpoint_io import read_state_dict
from espnet2_ext.speechllm.chatglm3 import (
    chatglm3_config_to_glm,
    convert_chatglm3_state_dict,
    load_chatglm3,
    load_glm_config,
)
from espnet2_ext.upstream_formats import save_chatglm3_checkpoint, tiny_chatglm3_config


def random_chatglm3_state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with ChatGLM3's names and shapes (norm weights near 1, like trained ones)."""
    g = torch.Generator().manual_seed(seed)
    h, hd = cfg["hidden_size"], cfg["kv_channels"]
    heads, groups = cfg["num_attention_heads"], cfg["multi_query_group_num"]
    qkv_rows = (heads + 2 * groups) * hd

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.2

    def norm() -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(h, generator=g)

    state = {
        "transformer.embedding.word_embeddings.weight": w(cfg["padded_vocab_size"], h),
        "transformer.rotary_pos_emb.inv_freq": torch.ones(hd // 4),
        "transformer.encoder.final_layernorm.weight": norm(),
        "transformer.output_layer.weight": w(cfg["padded_vocab_size"], h),
    }
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        state |= {
            p + "input_layernorm.weight": norm(),
            p + "self_attention.query_key_value.weight": w(qkv_rows, h),
            p + "self_attention.query_key_value.bias": w(qkv_rows),
            p + "self_attention.dense.weight": w(h, heads * hd),
            p + "post_attention_layernorm.weight": norm(),
            p + "mlp.dense_h_to_4h.weight": w(2 * cfg["ffn_hidden_size"], h),
            p + "mlp.dense_4h_to_h.weight": w(h, cfg["ffn_hidden_size"]),
        }
    return state


def reference_chatglm3_logits(sd: dict, cfg: dict, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """ChatGLM3's forward written from its modelling code, on ChatGLM3 tensor names.

    RMSNorm; fused qkv split [heads*hd | groups*hd | groups*hd]; RoPE on the first hd/2 dims
    of each head, rotating interleaved pairs (x[2i], x[2i+1]) with theta_i = base^(-2i/(hd/2)),
    base = 10000 * rope_ratio; each key/value group serves heads//groups consecutive heads;
    causal + key padding mask; SwiGLU with chunk(2), gate first; untied output layer.
    Position ids are 0..S-1 for every row, as ChatGLM3's get_position_ids makes them.
    """
    eps, hd = cfg["layernorm_epsilon"], cfg["kv_channels"]
    heads, groups = cfg["num_attention_heads"], cfg["multi_query_group_num"]
    B, S = ids.shape

    def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    rot = hd // 2
    base = 10000.0 * cfg.get("rope_ratio", 1)
    theta = 1.0 / (base ** (torch.arange(0, rot, 2, dtype=torch.float) / rot))
    angles = torch.outer(torch.arange(S, dtype=torch.float), theta)  # (S, rot/2)
    cos, sin = angles.cos(), angles.sin()

    def rope(x: torch.Tensor) -> torch.Tensor:  # (B, n, S, hd)
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        pairs = x_rot.reshape(*x_rot.shape[:-1], rot // 2, 2)
        x0, x1 = pairs[..., 0], pairs[..., 1]
        out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(-2)
        return torch.cat([out, x_pass], dim=-1)

    causal = torch.tril(torch.ones(S, S, dtype=torch.bool))
    allowed = causal[None, None] & attention_mask.bool()[:, None, None, :]
    x = sd["transformer.embedding.word_embeddings.weight"][ids]
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        h = rms(x, sd[p + "input_layernorm.weight"])
        qkv = h @ sd[p + "self_attention.query_key_value.weight"].T + sd[p + "self_attention.query_key_value.bias"]
        q, k, v = qkv.split([heads * hd, groups * hd, groups * hd], dim=-1)
        q = q.view(B, S, heads, hd).transpose(1, 2)
        k = k.view(B, S, groups, hd).transpose(1, 2)
        v = v.view(B, S, groups, hd).transpose(1, 2)
        q, k = rope(q), rope(k)
        k = k.repeat_interleave(heads // groups, dim=1)
        v = v.repeat_interleave(heads // groups, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)  # finite: pad rows stay NaN-free
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, S, heads * hd)
        x = x + ctx @ sd[p + "self_attention.dense.weight"].T
        h = rms(x, sd[p + "post_attention_layernorm.weight"])
        gate, up = (h @ sd[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)
        x = x + (torch.nn.functional.silu(gate) * up) @ sd[p + "mlp.dense_4h_to_h.weight"].T
    x = rms(x, sd["transformer.encoder.final_layernorm.weight"])
    return x @ sd["transformer.output_layer.weight"].T


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = tiny_chatglm3_config(vocab_size=96, hidden=32, layers=2, heads=4, kv_groups=2, ffn=48, rope_ratio=3.0)
    state = random_chatglm3_state(cfg)
    out = tmp_path_factory.mktemp("chatglm3")
    save_chatglm3_checkpoint(state, cfg, out, shard_size=20_000)
    return cfg, state, out


def test_writer_produces_upstream_layout(tiny):
    cfg, state, out = tiny
    written = json.loads((out / "config.json").read_text())
    assert written["model_type"] == "chatglm" and written["architectures"] == ["ChatGLMModel"]
    assert (out / "pytorch_model.bin.index.json").is_file()
    assert len(list(out.glob("pytorch_model-*-of-*.bin"))) > 1
    reread = read_state_dict(out)
    assert set(reread) == set(state)
    assert all(torch.equal(reread[k], state[k]) for k in state)


def test_config_fields_are_explicit(tiny):
    cfg, _, _ = tiny
    glm = chatglm3_config_to_glm(cfg)
    assert glm.rope_parameters["rope_theta"] == 30000.0
    assert glm.rope_parameters["partial_rotary_factor"] == 0.5
    assert glm.rms_norm_eps == 1e-5 and glm.num_key_value_heads == 2 and glm.head_dim == 8
    assert glm.tie_word_embeddings is False and glm.pad_token_id == 0 and glm.eos_token_id == 2
    no_mqa = chatglm3_config_to_glm({**cfg, "multi_query_attention": False})
    assert no_mqa.num_key_value_heads == cfg["num_attention_heads"]


@pytest.mark.parametrize("pad", [False, True])
def test_logits_match_reference_forward(tiny, pad):
    cfg, state, out = tiny
    model = load_chatglm3(out)
    ids = torch.randint(3, cfg["padded_vocab_size"], (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if pad:  # left padding, as ChatGLM3 pads
        ids[1, :3], mask[1, :3] = 0, 0
    positions = torch.arange(ids.shape[1])[None].expand_as(ids)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    want = reference_chatglm3_logits(state, cfg, ids, mask)
    valid = mask.bool()
    assert (got[valid] - want[valid]).abs().max() <= 1e-4


def test_kv_cache_greedy_equals_no_cache(tiny):
    _, _, out = tiny
    model = load_chatglm3(out)
    prompt = torch.tensor([[5, 17, 33, 9]])
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    with_cache = model.generate(prompt, use_cache=True, **kwargs)
    without = model.generate(prompt, use_cache=False, **kwargs)
    assert with_cache.shape == (1, 10)
    assert torch.equal(with_cache, without)


def test_converted_directory_round_trips(tiny, tmp_path):
    cfg, state, out = tiny
    (out / "tokenizer.model").write_bytes(b"stand-in")
    convert_chatglm3.main([str(out), str(tmp_path / "glm"), "--dtype", "float32"])
    assert json.loads((tmp_path / "glm" / "config.json").read_text())["model_type"] == "glm"
    assert (tmp_path / "glm" / "tokenizer.model").read_bytes() == b"stand-in"
    original, converted = load_chatglm3(out), load_chatglm3(tmp_path / "glm")
    assert isinstance(converted, GlmForCausalLM)
    ids = torch.tensor([[4, 8, 15, 16, 23, 42]])
    with torch.no_grad():
        assert torch.equal(original(ids).logits, converted(ids).logits)
    # ... and back to ChatGLM3's layout, safetensors this time.
    save_chatglm3_checkpoint(converted, cfg, tmp_path / "back", safetensors=True)
    back = read_state_dict(tmp_path / "back")
    assert set(back) == set(state) - {"transformer.rotary_pos_emb.inv_freq"}
    assert all(torch.equal(back[k], state[k]) for k in back)


def test_load_glm_config_reads_no_weights(tiny, tmp_path):
    cfg, _, out = tiny
    (tmp_path / "config.json").write_text((out / "config.json").read_text())  # config only
    assert load_glm_config(tmp_path).num_hidden_layers == cfg["num_layers"]
    model = load_chatglm3(tmp_path, meta=True)
    assert all(p.device.type == "meta" for p in model.parameters())


def test_full_6b_config_parameter_count(tmp_path):
    full = tiny_chatglm3_config(vocab_size=65024, hidden=4096, layers=28, heads=32, kv_groups=2, ffn=13696)
    (tmp_path / "config.json").write_text(json.dumps(full))
    model = load_chatglm3(tmp_path, meta=True)
    assert sum(p.numel() for p in model.parameters()) == 6_243_584_000


@pytest.mark.parametrize(
    "field, value",
    [
        ("add_bias_linear", True),
        ("original_rope", False),
        ("pre_seq_len", 128),
        ("apply_residual_connection_post_layernorm", True),
    ],
)
def test_unsupported_configs_are_refused(tiny, field, value):
    cfg, _, _ = tiny
    with pytest.raises(ValueError, match=field):
        chatglm3_config_to_glm({**cfg, field: value})


def test_missing_key_is_named(tiny, tmp_path):
    cfg, state, _ = tiny
    broken = {k: v for k, v in state.items() if k != "transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"}
    save_chatglm3_checkpoint(broken, cfg, tmp_path)
    with pytest.raises(ValueError, match=r"missing keys \['transformer.encoder.layers.1.mlp.dense_4h_to_h.weight'\]"):
        load_chatglm3(tmp_path)


def test_unexpected_key_is_named(tiny):
    cfg, state, _ = tiny
    with pytest.raises(ValueError, match="unexpected keys.*prefix_encoder"):
        convert_chatglm3_state_dict({**state, "transformer.prefix_encoder.embedding.weight": torch.zeros(1)}, cfg)


def test_wrong_shapes_are_named(tiny, tmp_path):
    cfg, state, _ = tiny
    bad_mlp = dict(state)
    bad_mlp["transformer.encoder.layers.0.mlp.dense_4h_to_h.weight"] = torch.zeros(32, 40)
    save_chatglm3_checkpoint(bad_mlp, cfg, tmp_path / "mlp")
    message = r"model.layers.0.mlp.down_proj.weight: checkpoint \(32, 40\) vs model \(32, 48\)"
    with pytest.raises(ValueError, match=message):
        load_chatglm3(tmp_path / "mlp")
    bad_qkv = dict(state)
    bad_qkv["transformer.encoder.layers.1.self_attention.query_key_value.weight"] = torch.zeros(96, 32)
    with pytest.raises(ValueError, match="layers.1.self_attention.query_key_value.weight has 96 rows"):
        convert_chatglm3_state_dict(bad_qkv, cfg)
