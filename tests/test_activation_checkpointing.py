"""Activation checkpointing of the LLM layers: same loss and gradients, LoRA (with dropout) and XATT included."""

from __future__ import annotations

import pytest
import torch
from helpers_tiny import make_model, tiny_cot_ner_batch

from espnet2_ext.speechllm import espnet_model
from espnet2_ext.speechllm.espnet_model import SpeechLLMModel


def _loss_and_grads(arch: str, tokenizer, batch: dict, checkpointing: bool) -> tuple[torch.Tensor, dict, int]:
    tiny = make_model(arch, tokenizer, llm_finetune="lora", gate_init=0.5)  # open gates: gradients reach XATT
    model = SpeechLLMModel(tiny.encoder, tiny.connector, tiny.llm, tokenizer.prefix_ids, tokenizer.eos_id,
                           activation_checkpointing=checkpointing)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B starts at 0 in LoRA; make it non-zero so that A gets gradients too
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    model.train()
    calls = []
    for layer in model.llm.model.layers:
        layer.mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    torch.manual_seed(0)  # LoRA dropout: the recomputation must draw the same masks
    loss, _, _ = model(**batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, len(calls)


@pytest.mark.parametrize("arch", ["adapter", "cross_attention"])
def test_same_loss_and_gradients_with_and_without_checkpointing(tmp_path, arch, monkeypatch):
    monkeypatch.setattr(espnet_model, "LOSS_CHUNK", 5)  # the checkpointed lm_head runs in several chunks
    tokenizer, batch = tiny_cot_ner_batch(tmp_path)
    loss, grads, calls = _loss_and_grads(arch, tokenizer, batch, checkpointing=False)
    ckpt_loss, ckpt_grads, ckpt_calls = _loss_and_grads(arch, tokenizer, batch, checkpointing=True)
    layers = calls
    assert ckpt_calls == 2 * layers  # every layer ran again in the backward pass
    assert torch.allclose(loss, ckpt_loss, rtol=0, atol=1e-6)
    assert set(grads) == set(ckpt_grads)
    assert any("lora_A" in n for n in grads) and any(".blocks." in n or n.startswith("connector.") for n in grads)
    for name, grad in grads.items():
        assert torch.allclose(grad, ckpt_grads[name], rtol=1e-5, atol=1e-7), name
    assert any(grad.abs().sum() > 0 for n, grad in grads.items() if "lora_A" in n)
