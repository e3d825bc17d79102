"""SpeechLLMModel: overfitting tiny data, cached vs uncached greedy decoding, trainable-only checkpoints."""

import pytest
import torch
from helpers_tiny import TEXTS, greedy_reference, make_model, tiny_cot_ner_batch

from espnet2_ext.speechllm.prompts import build_target_text


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_cot_ner_batch(tmp_path_factory.mktemp("tiny"))


def _targets(tokenizer):
    history = {"spk1_u2": ["spk1_u1"], "spk2_u2": ["spk2_u1"]}
    return [
        tokenizer.encode(build_target_text("cot_ner", [TEXTS[h] for h in history.get(uid, [])], text))
        for uid, text in TEXTS.items()
    ]


@pytest.mark.parametrize("arch", ["adapter", "cross_attention"])
def test_overfits_tiny_data_and_greedy_reproduces_it(tiny, arch):
    tokenizer, batch = tiny
    torch.manual_seed(0)
    model = make_model(arch, tokenizer)
    optim = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(300):
        loss, stats, weight = model(**batch)
        optim.zero_grad()
        loss.backward()
        optim.step()
        if stats["acc"] == 1.0 and loss < 0.05:
            break
    assert weight.item() == 4
    model.eval()
    hyps = greedy_reference(model, batch, max_new_tokens=40)
    assert hyps == _targets(tokenizer)
    assert greedy_reference(model, batch, max_new_tokens=40, use_cache=False) == hyps


@pytest.mark.parametrize("arch", ["adapter", "cross_attention"])
def test_cached_greedy_equals_uncached_on_a_random_model(tiny, arch):
    tokenizer, batch = tiny
    model = make_model(arch, tokenizer, gate_init=0.7).eval()
    cached = greedy_reference(model, batch, max_new_tokens=12)
    assert cached == greedy_reference(model, batch, max_new_tokens=12, use_cache=False)
    assert all(len(h) > 0 for h in cached)


def test_left_padding_keeps_each_item_independent(tiny):
    tokenizer, batch = tiny
    model = make_model("adapter", tokenizer).eval()
    together = greedy_reference(model, batch, max_new_tokens=8)
    alone = greedy_reference(model, {k: v[1:2] for k, v in batch.items()}, max_new_tokens=8)
    assert alone[0] == together[1]


@pytest.mark.parametrize("mode", ["lora", "full", "frozen"])
def test_state_dict_holds_only_trainable_parameters(tiny, mode):
    tokenizer, _ = tiny
    model = make_model("cross_attention", tokenizer, llm_finetune=mode)
    state = model.state_dict()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(state) == trainable
    assert any(k.startswith("connector.blocks.0.gate") for k in state)
    assert any("lora_" in k for k in state) == (mode == "lora")
    assert any(k.startswith("llm.model.embed_tokens") for k in state) == (mode == "full")
    assert not any("lora_" in k for k in state if k.startswith("connector."))


def test_loading_restores_trainables_and_rejects_incomplete_checkpoints(tiny):
    tokenizer, _ = tiny
    source = make_model("adapter", tokenizer, llm_finetune="lora", seed=1)
    target = make_model("adapter", tokenizer, llm_finetune="lora", seed=2)
    target.load_state_dict(source.state_dict())
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in source.state_dict().items())
    incomplete = source.state_dict()
    del incomplete["connector.gamma"]
    with pytest.raises(RuntimeError, match="connector.gamma"):
        target.load_state_dict(incomplete)
    reshaped = source.state_dict()
    reshaped["connector.gamma"] = torch.zeros(3)
    with pytest.raises(RuntimeError, match="shapes differ"):
        target.load_state_dict(reshaped)
