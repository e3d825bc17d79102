"""LoRA settings: the paper's attention-only adapter (q/k/v sharing one A, as ChatGLM3's fused
query_key_value) and every projection; sharing survives optimisers, checkpoints and merging."""

from __future__ import annotations

import pytest
import torch
from transformers import GlmConfig, GlmForCausalLM

from espnet2_ext.speechllm.lora import configure_llm_finetuning, resolve_lora_conf
from espnet2_ext.speechllm.lora_merge import merge_lora

HIDDEN, HEADS, KV, HEAD_DIM, LAYERS = 32, 4, 2, 8, 2


def _llm() -> GlmForCausalLM:
    torch.manual_seed(0)
    config = GlmConfig(vocab_size=50, hidden_size=HIDDEN, intermediate_size=48, num_hidden_layers=LAYERS,
                       num_attention_heads=HEADS, num_key_value_heads=KV, head_dim=HEAD_DIM,
                       partial_rotary_factor=0.5, pad_token_id=0, eos_token_id=2, attention_bias=True)
    return GlmForCausalLM(config).eval()


def _lora_params(llm: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in llm.named_parameters() if "lora_" in n)


def test_attention_setting_is_a_fused_qkv_lora():
    llm = _llm()
    configure_llm_finetuning(llm, "lora", {"r": 4})
    r, q_out, kv_out = 4, HEADS * HEAD_DIM, KV * HEAD_DIM
    fused_qkv = r * (HIDDEN + q_out + 2 * kv_out)  # one A (r x hidden), B stacked over q, k, v
    dense = r * (q_out + HIDDEN)
    assert _lora_params(llm) == LAYERS * (fused_qkv + dense)
    attn = llm.model.layers[0].self_attn
    assert attn.k_proj.lora_A["default"].weight is attn.q_proj.lora_A["default"].weight
    assert attn.v_proj.lora_A["default"].weight is attn.q_proj.lora_A["default"].weight
    assert not hasattr(llm.model.layers[0].mlp.down_proj, "lora_A")


def test_all_projections_setting():
    llm = _llm()
    configure_llm_finetuning(llm, "lora", {"r": 4, "projections": "all"})
    attn = llm.model.layers[0].self_attn
    assert attn.k_proj.lora_A["default"].weight is not attn.q_proj.lora_A["default"].weight
    assert hasattr(llm.model.layers[0].mlp.down_proj, "lora_A")


def test_shared_a_trains_once_and_merges():
    llm = _llm()
    configure_llm_finetuning(llm, "lora", {"r": 4, "lora_dropout": 0.0})
    params = [p for p in llm.parameters() if p.requires_grad]
    assert len(params) == len({id(p) for p in params})
    optimizer = torch.optim.SGD(params, lr=0.1)
    ids = torch.randint(3, 50, (2, 6))
    for _ in range(2):  # B starts at zero: the second step moves A through q, k and v together
        optimizer.zero_grad()
        llm(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    attn = llm.model.layers[0].self_attn
    assert attn.k_proj.lora_A["default"].weight is attn.q_proj.lora_A["default"].weight
    with torch.no_grad():
        before = llm(input_ids=ids).logits
        merge_lora(llm)
        after = llm(input_ids=ids).logits
    assert not any("lora_" in n for n, _ in llm.named_parameters())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("conf", [{"projections": "ffn"}, {"projections": "all", "target_modules": ["q_proj"]}])
def test_bad_settings_are_refused(conf):
    with pytest.raises(ValueError, match="projections"):
        resolve_lora_conf(conf)


def test_target_modules_replace_projections():
    conf, shared = resolve_lora_conf({"target_modules": ["q_proj"]})
    assert conf["target_modules"] == ["q_proj"] and not shared
