"""Full-size speed and memory on one CUDA GPU: Whisper-large-v2 + ChatGLM3-6B architectures, random bf16 weights.

Builds the architectures from ``conf/model_configs/`` (no checkpoints needed: random weights,
bfloat16) and measures, for both connectors (decoder-only adapter, encoder-decoder gated
cross-attention; LoRA r=32 on the LLM as in training):

* greedy decoding of ``--new_tokens`` (50) tokens for batch 1/8/32 of 250-frame encoder outputs
  (5 s), with and without the KV cache: wall time, utterances/s, real-time factor, peak memory;
* one training step (forward, backward, AdamW) at batch 8 with 40 target tokens: time, peak memory;
* the frozen Whisper-large-v2 encoder on a batch of 8 30-s log-mel windows.

One warm-up and ``--repeats`` timed runs each (the median is reported). Meant to finish within
8 minutes on an H100/H200; stops with a clear message when no GPU is present. ``--tiny`` shrinks
every config and runs on CPU (for tests). Writes ``bench/results/gpu_full_size.json``.

    python bench/gpu_full_size.py [--repeats 2] [--out bench/results/gpu_full_size.json]
    python bench/gpu_full_size.py --tiny --out /tmp/tiny.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import GlmForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decoding import build_model, decode_all, environment  # noqa: E402

from espnet2_ext.speechllm.chatglm3 import chatglm3_config_to_glm  # noqa: E402
from espnet2_ext.speechllm.lora import configure_llm_finetuning  # noqa: E402
from espnet2_ext.speechllm.whisper_encoder import FrozenWhisperEncoder, load_whisper_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FRAME_RATE = 50
FULL = {
    "frames": 250, "new_tokens": 50, "batch_sizes": [1, 8, 32], "train_batch": 8, "train_tokens": 40,
    "adapter": dict(stack=5, hidden_size=4096),
    "cross_attention": dict(stack=5, attention_dim=1024, num_heads=8),
    "lora": dict(r=32),
}  # fmt: skip
TINY_OVERRIDES = {
    "llm": dict(hidden_size=64, ffn_hidden_size=128, num_layers=2, num_attention_heads=4, kv_channels=16,
                padded_vocab_size=512),
    "whisper": dict(d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128),
    "adapter": dict(stack=5, hidden_size=64),
    "cross_attention": dict(stack=5, attention_dim=32, num_heads=4),
    "lora": dict(r=4),
    "new_tokens": 5, "frames": 50, "batch_sizes": [1, 4], "train_batch": 2, "train_tokens": 6,
}  # fmt: skip


class default_dtype:
    """Build modules directly in ``dtype`` (a 6B model built in float32 first would need 25 GB more)."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __enter__(self) -> None:
        self.previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc) -> None:
        torch.set_default_dtype(self.previous)


class Clock:
    """Wall time and peak memory of a callable on the chosen device."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def measure(self, run, repeats: int) -> dict:
        run()  # warm-up
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            self.sync()
            start = time.perf_counter()
            run()
            self.sync()
            times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None
        return {"wall_s": round(statistics.median(times), 4), "peak_gib": None if peak is None else round(peak, 2)}


def build_llm(tiny: bool, device: torch.device, dtype: torch.dtype) -> GlmForCausalLM:
    cfg = json.loads((REPO / "conf/model_configs/chatglm3-6b/config.json").read_text())
    if tiny:
        cfg.update(TINY_OVERRIDES["llm"])
    config = chatglm3_config_to_glm(cfg)
    config.dtype = dtype
    with torch.device(device), default_dtype(dtype):
        return GlmForCausalLM(config).eval()


def build_whisper(tiny: bool, device: torch.device, dtype: torch.dtype) -> FrozenWhisperEncoder:
    config = load_whisper_config(REPO / "conf/model_configs/whisper-large-v2")
    if tiny:
        for key, value in TINY_OVERRIDES["whisper"].items():
            setattr(config, key, value)
    with torch.device(device), default_dtype(dtype):
        return FrozenWhisperEncoder(config, pad_to_30s=True)


def train_step_fn(model, batch: int, frames: int, tokens: int, device: torch.device, dtype: torch.dtype):
    """One optimizer step on random encoder outputs and targets (connector + LoRA trainable)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-5)
    dim = model.encoder.output_size()
    vocab = model.llm.config.vocab_size
    lengths = torch.full((batch,), frames, device=device)
    ones = torch.ones(batch, dtype=torch.long, device=device)
    data = {
        "speech": torch.randn(batch, frames, dim, device=device, dtype=dtype), "speech_lengths": lengths,
        "speech_segments": lengths[:, None], "speech_segments_lengths": ones, "num_history": ones * 0,
        "prompt": torch.full((batch, 1), 100, device=device), "prompt_lengths": ones,
        "text": torch.randint(3, vocab - 16, (batch, tokens), device=device),
        "text_lengths": torch.full((batch,), tokens, device=device),
    }  # fmt: skip

    def step() -> None:
        loss, _, _ = model(**data)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    return step


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="shrunk configs on CPU (a functional test)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/gpu_full_size.json")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("gpu_full_size.py needs a CUDA GPU (torch.cuda.is_available() is False); use --tiny on CPU")
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    setup = {**FULL, **TINY_OVERRIDES} if args.tiny else FULL
    clock = Clock(device)
    torch.manual_seed(0)
    result = {
        "environment": environment(), "tiny": args.tiny, "dtype": str(dtype), "repeats": args.repeats,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "setup": {k: setup[k] for k in ("frames", "new_tokens", "batch_sizes", "train_batch", "train_tokens")},
    }  # fmt: skip
    started = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every section, so a late failure keeps the earlier numbers
        result["total_s"] = round(time.perf_counter() - started, 1)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    whisper = build_whisper(args.tiny, device, dtype)
    mel = torch.randn(8, 3000, whisper.config.num_mel_bins, device=device, dtype=dtype)
    mel_lengths = torch.full((8,), 3000, device=device)
    with torch.no_grad():
        result["whisper_encoder_batch8_30s"] = clock.measure(lambda: whisper(mel, mel_lengths), args.repeats)
    encoder_dim = whisper.config.d_model
    del whisper, mel
    save()

    llm = build_llm(args.tiny, device, dtype)
    configure_llm_finetuning(llm, "lora", setup["lora"])
    llm.to(device, dtype)
    rng = np.random.default_rng(0)
    for arch in ("adapter", "cross_attention"):
        model = build_model(arch, llm, encoder_dim, setup[arch])
        runs = []
        for batch_size in setup["batch_sizes"]:
            utts = [rng.standard_normal((setup["frames"], encoder_dim)).astype(np.float32) for _ in range(batch_size)]
            for use_cache in (False, True):
                with torch.no_grad():
                    row = clock.measure(lambda: decode_all(model, utts, batch_size, setup["new_tokens"], use_cache), args.repeats)
                audio_s = batch_size * setup["frames"] / FRAME_RATE
                row.update(batch_size=batch_size, kv_cache=use_cache, utt_per_s=round(batch_size / row["wall_s"], 3),
                           rtf=round(row["wall_s"] / audio_s, 5))
                runs.append(row)
                print(arch, row, flush=True)
        step = train_step_fn(model, setup["train_batch"], setup["frames"], setup["train_tokens"], device, dtype)
        train = clock.measure(step, args.repeats)
        train["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        result[arch] = {"decoding": runs, "train_step": train}
        print(arch, "train", train, flush=True)
        save()
        model.eval()
        llm.zero_grad(set_to_none=True)
    return result


if __name__ == "__main__":
    main()
