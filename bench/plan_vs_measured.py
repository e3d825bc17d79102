"""``plan_memory``'s activation model against the measured peak of real training steps on CPU.

Builds speech-LLMs of several shapes (LoRA with dropout on every projection, both connectors,
fp32 and bf16 autocast, with and without activation checkpointing), runs one forward + backward
on a padded batch under :mod:`memory_probe`, and compares the measured peak (tensor bytes alive
at once above the weights) with the planner's ``activation_bytes`` plus the gradients and the
autocast copies of the trainable weights. Writes ``bench/results/plan_vs_measured.json``.

    python bench/plan_vs_measured.py [--shapes small mid]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

import torch
from transformers import GlmForCausalLM

from espnet2_ext.speechllm import memory_plan
from espnet2_ext.speechllm.backbones import PrecomputedEncoder
from espnet2_ext.speechllm.chatglm3 import chatglm3_config_to_glm
from espnet2_ext.speechllm.connectors import AdapterConnector, CrossAttentionConnector
from espnet2_ext.speechllm.espnet_model import SpeechLLMModel
from espnet2_ext.speechllm.lora import configure_llm_finetuning
from espnet2_ext.speechllm.precision import keep_trainable_fp32
from espnet2_ext.upstream_formats import tiny_chatglm3_config

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "small": dict(hidden=256, ffn=688, heads=8, kv=2, layers=4, vocab=4096, r=16, xatt=64, sequences=4),
    "narrow": dict(hidden=128, ffn=512, heads=4, kv=1, layers=4, vocab=16384, r=8, xatt=32, sequences=6, dropout=0.0),
    "mid": dict(hidden=1024, ffn=2816, heads=16, kv=2, layers=4, vocab=32000, r=32, xatt=256, sequences=4),
}
ENCODER_DIM = 64
STACK = 5


def _probe():
    spec = importlib.util.spec_from_file_location("memory_probe", REPO / "bench" / "memory_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(arch: str, dtype: torch.dtype, checkpointing: bool, shape: dict):
    torch.manual_seed(0)
    cfg = tiny_chatglm3_config(vocab_size=shape["vocab"], hidden=shape["hidden"], layers=shape["layers"],
                               heads=shape["heads"], kv_groups=shape["kv"], ffn=shape["ffn"])
    llm = GlmForCausalLM(chatglm3_config_to_glm(cfg)).to(dtype)
    if arch == "adapter":
        connector = AdapterConnector.build(ENCODER_DIM, llm.config, stack=STACK, hidden_size=shape["hidden"])
    else:
        connector = CrossAttentionConnector.build(ENCODER_DIM, llm.config, stack=STACK, attention_dim=shape["xatt"],
                                                  num_heads=4, gate_init=0.5)
    lora = {"r": shape["r"], "lora_dropout": shape.get("dropout", 0.05)}
    configure_llm_finetuning(llm, "lora", lora)
    keep_trainable_fp32(llm)
    vocab = shape["vocab"]
    model = SpeechLLMModel(PrecomputedEncoder(ENCODER_DIM), connector, llm, [vocab - 2, vocab - 1], 2,
                           compute_dtype=dtype, activation_checkpointing=checkpointing)
    return model, argparse.Namespace(llm_finetune="lora", lora_conf=lora)


def padded_batch(sequences: int, vocab: int) -> tuple[dict, list[int], list[int]]:
    frames = [400 - 50 * (i % 4) - 7 * (i // 4) for i in range(sequences)]
    texts = [60 - 10 * (i % 3) - (i // 3) for i in range(sequences)]
    g = torch.Generator().manual_seed(1)
    ones = torch.ones(sequences, dtype=torch.long)
    batch = {
        "speech": torch.randn(sequences, max(frames), ENCODER_DIM, generator=g), "speech_lengths": torch.tensor(frames),
        "speech_segments": torch.tensor(frames)[:, None], "speech_segments_lengths": ones,
        "num_history": ones * 0, "prompt": torch.full((sequences, 1), 5), "prompt_lengths": ones,
        "text": torch.randint(3, vocab - 3, (sequences, max(texts)), generator=g), "text_lengths": torch.tensor(texts),
    }  # fmt: skip
    return batch, frames, texts


def compare(arch: str, dtype: torch.dtype, checkpointing: bool, shape: dict) -> dict:
    model, args = build(arch, dtype, checkpointing, shape)
    model.train()
    batch, frames, texts = padded_batch(shape["sequences"], shape["vocab"])
    measured = _probe().measure_step(model, batch)
    speech = [math.ceil(f / STACK) for f in frames]
    prefix_prompt = 3
    if arch == "adapter":
        llm_len, speech_len = max(prefix_prompt + s + t for s, t in zip(speech, texts)), 0
    else:
        llm_len, speech_len = max(prefix_prompt + t for t in texts), max(speech)
    planned = memory_plan.BatchShape(shape["sequences"], llm_len, speech_len, sum(texts))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shape_ = memory_plan.model_shape(model, args)
    predicted = memory_plan.activation_bytes(shape_, planned, checkpointing, "cpu")
    predicted += trainable * 4 + (trainable * shape_.act_bytes if shape_.act_bytes < 4 else 0)
    return {
        "arch": arch, "dtype": str(dtype).removeprefix("torch."), "checkpointing": checkpointing,
        "tokens": shape["sequences"] * llm_len, "measured_mb": round(measured["peak"] / 1e6, 2),
        "predicted_mb": round(predicted / 1e6, 2), "ratio": round(predicted / measured["peak"], 3),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/plan_vs_measured.json")
    args = parser.parse_args(argv)
    result = {}
    for name in args.shapes:
        rows = result[name] = {"shape": SHAPES[name], "runs": []}
        for arch in ("adapter", "cross_attention"):
            for dtype in (torch.float32, torch.bfloat16):
                for checkpointing in (False, True):
                    rows["runs"].append(compare(arch, dtype, checkpointing, SHAPES[name]))
                    print(name, rows["runs"][-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
