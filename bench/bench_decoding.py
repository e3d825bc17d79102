"""Decoding speed of the speech-LLM on CPU: batch 1/8/32, with and without the KV cache.

Mini-recipe-sized random models (encoder output 192 dims, ChatGLM3 layout 192 wide, 2 layers,
vocabulary 1,504), both connectors, on synthetic utterances of 2-4 s of cached encoder output
(50 frames/s). Every configuration decodes the same utterances to exactly ``--new_tokens`` tokens
(eos and the repetition guard are disabled: a random model's outputs would otherwise end at
random), so the timings compare the same work. Reports the real-time factor (decoding time /
audio time) and utterances/s (best of ``--repeats`` runs: the CPU may be shared), and the speed-up of batched cached decoding over one-at-a-time
uncached decoding, with machine and versions, to ``bench/results/decoding_cpu.json``.

    python bench/bench_decoding.py [--utts 32] [--new_tokens 30] [--out bench/results/decoding_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from transformers import GlmForCausalLM

from espnet2_ext.speechllm.backbones import PrecomputedEncoder
from espnet2_ext.speechllm.chatglm3 import chatglm3_config_to_glm
from espnet2_ext.speechllm.connectors import AdapterConnector, CrossAttentionConnector
from espnet2_ext.speechllm.decoding import DecodingOptions, greedy_search
from espnet2_ext.speechllm.espnet_model import SpeechLLMModel
from espnet2_ext.upstream_formats import tiny_chatglm3_config

REPO = Path(__file__).resolve().parents[1]
FRAME_RATE = 50  # encoder frames per second (Whisper)
NO_END = dict(repeat_ngram=1, repeat_times=10**6)
MINI_LLM = dict(vocab_size=1504, hidden=192, layers=2, heads=4, kv_groups=2, ffn=512)


def build_model(arch: str, llm: GlmForCausalLM, encoder_dim: int, connector_conf: dict) -> SpeechLLMModel:
    """A speech-LLM around ``llm`` whose eos never occurs (so every run generates the same number of tokens)."""
    cls = AdapterConnector if arch == "adapter" else CrossAttentionConnector
    connector = cls.build(encoder_dim, llm.config, **connector_conf).to(llm.device, llm.dtype)
    vocab = llm.config.vocab_size
    model = SpeechLLMModel(PrecomputedEncoder(encoder_dim), connector, llm, [vocab - 8, vocab - 6], eos_id=-1)
    return model.to(llm.device).eval()


def synthetic_batches(num: int, frames: tuple[int, int], dim: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(*frames)), dim)).astype(np.float32) for _ in range(num)]


def decode_all(model: SpeechLLMModel, utts: list[np.ndarray], batch_size: int, new_tokens: int, use_cache: bool) -> None:
    """Greedy-decode ``utts`` in batches (encoder output -> connector -> LLM), as the inference engine does."""
    device = model.prefix_ids.device
    dtype = next(model.connector.parameters()).dtype
    options = DecodingOptions(use_cache=use_cache, **NO_END)
    for start in range(0, len(utts), batch_size):
        chunk = utts[start : start + batch_size]
        lengths = torch.tensor([u.shape[0] for u in chunk], device=device)
        speech = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(u) for u in chunk], batch_first=True)
        ones = torch.ones(len(chunk), dtype=torch.long, device=device)
        speech_in = model.encode_speech(speech.to(device, dtype), lengths, lengths[:, None], ones, ones * 0)
        prompt = torch.full((len(chunk), 1), 100, device=device)
        inputs = model.build_inputs(speech_in, prompt, ones)
        greedy_search(model, inputs, [new_tokens] * len(chunk), options)


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def environment() -> dict:
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.uname().machine,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other processes on the CPU distort the timings
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": metadata.version("transformers"),
    }


def run_grid(model: SpeechLLMModel, utts: list[np.ndarray], new_tokens: int, batch_sizes, repeats: int = 1) -> list[dict]:
    """Time every (batch size, cache) pair on the same utterances (best of ``repeats``; the CPU is
    shared, so the minimum is the least disturbed run); one untimed warm-up pass first."""
    audio_s = sum(u.shape[0] for u in utts) / FRAME_RATE
    decode_all(model, utts[: max(batch_sizes)], max(batch_sizes), 2, True)
    rows = []
    for use_cache in (False, True):
        for batch_size in batch_sizes:
            seconds = min(timed(lambda: decode_all(model, utts, batch_size, new_tokens, use_cache)) for _ in range(repeats))
            rows.append({
                "batch_size": batch_size, "kv_cache": use_cache, "utterances": len(utts), "audio_s": round(audio_s, 2),
                "new_tokens": new_tokens, "wall_s": round(seconds, 4), "rtf": round(seconds / audio_s, 5),
                "utt_per_s": round(len(utts) / seconds, 3),
            })  # fmt: skip
    return rows


def speedup(rows: list[dict], batch_size: int) -> float:
    base = next(r for r in rows if r["batch_size"] == 1 and not r["kv_cache"])
    fast = next(r for r in rows if r["batch_size"] == batch_size and r["kv_cache"])
    return round(base["wall_s"] / fast["wall_s"], 2)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utts", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=30)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per configuration (best kept)")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/decoding_cpu.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    llm = GlmForCausalLM(chatglm3_config_to_glm(tiny_chatglm3_config(**MINI_LLM))).eval()
    utts = synthetic_batches(args.utts, (2 * FRAME_RATE, 4 * FRAME_RATE + 1), 192)
    result = {"environment": environment(), "repeats": args.repeats, "llm": MINI_LLM, "encoder_dim": 192, "archs": {}}
    for arch, conf in (("adapter", dict(stack=5, hidden_size=192)), ("cross_attention", dict(stack=5, attention_dim=64, num_heads=4))):
        rows = run_grid(build_model(arch, llm, 192, conf), utts, args.new_tokens, args.batch_sizes, args.repeats)
        result["archs"][arch] = {
            "runs": rows,
            "speedup_batched_cached_vs_bs1_uncached": {str(b): speedup(rows, b) for b in args.batch_sizes if b > 1},
        }
        print(arch, json.dumps(result["archs"][arch]["speedup_batched_cached_vs_bs1_uncached"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
