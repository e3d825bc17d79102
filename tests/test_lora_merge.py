"""LoRA merged into the base LLM decodes exactly as the unmerged adapters (tiny models, CPU, float32)."""

import pytest
import torch
from helpers_tiny import make_model, tiny_cot_ner_batch
from peft.tuners.tuners_utils import BaseTunerLayer

from espnet2_ext.speechllm.decoding import DecodingOptions, greedy_search
from espnet2_ext.speechllm.lora_merge import merge_lora

NO_GUARD = dict(repeat_ngram=1, repeat_times=1000)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_cot_ner_batch(tmp_path_factory.mktemp("tiny"))


def _lora_model(arch, tokenizer):
    """A tiny model whose LoRA update is far from zero (peft starts B at zero, which would merge nothing)."""
    model = make_model(arch, tokenizer, llm_finetune="lora", gate_init=0.7, seed=3).eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.llm.named_parameters():
            if "lora_B" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return model


def _greedy(model, batch):
    keys = ("speech", "speech_lengths", "speech_segments", "speech_segments_lengths", "num_history")
    speech = model.encode_speech(*(batch[k] for k in keys))
    inputs = model.build_inputs(speech, batch["prompt"], batch["prompt_lengths"])
    last = model.decode_step(inputs, None)
    return [h.ids for h in greedy_search(model, inputs, [12] * 4, DecodingOptions(**NO_GUARD))], last


@pytest.mark.parametrize("arch", ["adapter", "cross_attention"])
def test_merged_lora_gives_the_unmerged_tokens(tiny, arch):
    tokenizer, batch = tiny
    model = _lora_model(arch, tokenizer)
    unmerged, logits = _greedy(model, batch)
    without_lora = make_model(arch, tokenizer, llm_finetune="frozen", gate_init=0.7, seed=3).eval()
    assert _greedy(without_lora, batch)[0] != unmerged  # the update matters
    assert merge_lora(model.llm) == 2 * 4  # q, k, v (one shared A), o in each of the two layers: the default
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
    assert not any("lora_" in name for name, _ in model.named_parameters())
    merged, merged_logits = _greedy(model, batch)
    assert merged == unmerged
    assert torch.allclose(merged_logits, logits, atol=1e-4)
