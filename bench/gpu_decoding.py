"""Full-size decoding speed on one GPU: the AISHELL-1 test-set load through both architectures.

    python bench/gpu_decoding.py --out bench/results/           # a CUDA GPU; about 3-5 minutes on an H200
    python bench/gpu_decoding.py --tiny --out /tmp/bench/      # shrunk configs on CPU (tests the script)

Model: ChatGLM3-6B (``conf/model_configs/chatglm3-6b``) with both connectors for Whisper-large-v2
outputs (1280 dims, 5-frame stacking), random bfloat16 weights, no LoRA (stage 8 merges it). The
utterances never end at eos (random weights); each ends at its own realistic output length instead,
with the repetition guard off, so every setting does the same work.

Load (a model of AISHELL-1 test, seeded): 7,176 utterances; durations log-normal with a 5.03 s mean
(36,109 s of audio, the figure published for this test set) and σ = 0.33 (the upper-quartile /
median ratio 5.3 s / 4.3 s of a published AISHELL-1 duration analysis), clipped to 1.2-14.5 s
(AISHELL-1's shortest and longest); characters = duration × 2.9/s × log-normal(0, 0.15), 1-44
(mean ~14.6: the test set's 104,765 characters / 7,176); entities Poisson(0.47) (3,393 / 7,176).
Output tokens = characters (at most one ChatGLM3 token per character) + 2 markup tokens per entity
+ eos (~16.7). Encoder outputs are random at 50 frames/s; the connector stacks 5 of them into one
speech token (10 per second). Each setting decodes the same ``--utts`` (1,024) utterances drawn
from the 7,176 and extrapolates (``test_set_s`` = wall time × 7,176 / utts). Short-form (no
history); long-form adds the history's speech and text to each prompt: a longer prefill, the same
number of steps.

Settings are named ``{reference|static|static_cudagraph|static_inductor}_b{batch}[_sync{n}]``:
the reference decoder (``DynamicCache``, finished rows leave) or ``fast_decoding`` (static cache,
eager / CUDA graph / torch.compile'd step), length-sorted batches. For each: utterances/s, RTF
(decoding wall time / audio), the extrapolated test-set time, peak GPU memory, and how many
utterances got the same token ids as in each earlier setting (``same_ids_as``). In bf16 two
decoders, or one decoder at two batch sizes, agree only up to rounding (the attention kernels
reduce over different lengths), and a random-weight model's near-flat distributions turn rounding
into different argmaxes far more often than a trained model's; ``reference_b32`` against
``reference_b256`` is the baseline (the CPU tests check token identity in float32). Batch-1
latency: ``--latency_utts`` utterances one at a time with the reference, static and
static_cudagraph decoders.

Expected at full size, by arithmetic (``expected_s``; ``fast_decoding``'s docstring has the
derivation): a decode step reads the 12.5 GB of bf16 weights, 2.6 ms at 4.8 TB/s (H200), and
computes 12.5 GFLOP per row (4 ms at batch 256); the prefill computes 12.5 GFLOP per prompt token
(54 per utterance: ~6 s for the test set). So the test set costs about
ceil(7176 / B) × ~25 steps × 2.7-4.5 ms + 6 s: ~23 s at B = 32 and ~10 s at B = 128-256 with CUDA
graphs, against ~45 ms per step without them (~4 minutes at B = 32, ~40 s at B = 256). The
one-minute target (RTF 0.0017) needs B ≥ 16 with graphs, B ≥ ~200 without. Also runnable by name:
``static_inductor_b256`` (torch.compile'd step; its compile takes minutes, so it is not a default).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decoding import NO_END, build_model, environment  # noqa: E402
from gpu_full_size import FULL, TINY_OVERRIDES, build_llm  # noqa: E402

from espnet2_ext.speechllm.decoding import DecodingOptions, greedy_search  # noqa: E402
from espnet2_ext.speechllm.fast_decoding import length_sorted_batches, release_workspaces, workspace_stats  # noqa: E402
from espnet2_ext.speechllm.whisper_encoder import load_whisper_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FRAME_RATE = 50  # Whisper encoder frames per second
TEST_SET = dict(utterances=7176, mean_s=5.03, sigma=0.33, min_s=1.2, max_s=14.5, chars_per_s=2.9,
                chars_sigma=0.15, max_chars=44, entities_per_utt=0.47)  # fmt: skip
# Setting kinds: (DecodingOptions.cache, DecodingOptions.compile).
KINDS = {"reference": ("dynamic", "none"), "static": ("static", "none"), "static_cudagraph": ("static", "cudagraph"),
         "static_inductor": ("static", "inductor")}  # fmt: skip
SETTING = re.compile(rf"({'|'.join(KINDS)})_b(\d+)(?:_sync(\d+))?$")
DEFAULTS = {
    False: dict(utts=1024, latency_utts=8, settings=[
        "reference_b32", "reference_b256", "static_b256", "static_cudagraph_b32", "static_cudagraph_b128",
        "static_cudagraph_b256", "static_cudagraph_b256_sync1"]),
    True: dict(utts=24, latency_utts=2, settings=[
        "reference_b4", "reference_b12", "static_b12", "static_cudagraph_b12_sync2"]),
}  # fmt: skip
# Floor of a full-size step/prefill (ChatGLM3-6B in bf16 on an H200; other GPUs: --bandwidth_tb_s, --tflops).
WEIGHT_BYTES = 12.5e9
FLOP_PER_TOKEN = 2 * 6.24e9
KV_BYTES_PER_TOKEN = 28 * 2 * 2 * 128 * 2  # layers × (k, v) × key/value groups × head dim × bf16


def sample_test_set(seed: int = 0, tokens_per_char: float = 1.0) -> dict[str, np.ndarray]:
    """Durations (s), characters and output tokens (eos included) of the 7,176 modelled test utterances."""
    rng = np.random.default_rng(seed)
    t = TEST_SET
    mu = np.log(t["mean_s"]) - t["sigma"] ** 2 / 2
    durations = np.clip(rng.lognormal(mu, t["sigma"], t["utterances"]), t["min_s"], t["max_s"])
    chars = np.clip(np.rint(durations * t["chars_per_s"] * rng.lognormal(0, t["chars_sigma"], len(durations))),
                    1, t["max_chars"]).astype(int)  # fmt: skip
    entities = rng.poisson(t["entities_per_utt"], len(durations))
    tokens = np.maximum(1, np.rint(chars * tokens_per_char)).astype(int) + 2 * entities + 1
    return {"durations": durations, "chars": chars, "tokens": tokens}


def describe(load: dict[str, np.ndarray], subset: np.ndarray) -> dict:
    d, c, n = load["durations"], load["chars"], load["tokens"]
    return {
        "utterances": len(d), "audio_s": round(float(d.sum()), 1), "mean_s": round(float(d.mean()), 2),
        "quartiles_s": [round(float(q), 2) for q in np.percentile(d, [25, 50, 75])],
        "min_s": round(float(d.min()), 2), "max_s": round(float(d.max()), 2),
        "mean_chars": round(float(c.mean()), 2), "mean_output_tokens": round(float(n.mean()), 2),
        "mean_prompt_tokens": round(float(np.mean(3 + np.ceil(d * FRAME_RATE / 5))), 1),
        "decoded_subset": len(subset), "subset_audio_s": round(float(d[subset].sum()), 1),
    }  # fmt: skip


def parse_setting(name: str) -> dict:
    match = SETTING.match(name)
    if not match:
        raise SystemExit(f"unknown setting {name!r}: use {KINDS}_b<N>[_sync<K>]")
    kind, batch, sync = match.groups()
    options = dict(zip(("cache", "compile"), KINDS[kind]), **({"sync_every": int(sync)} if sync else {}))
    return {"name": name, "batch_size": int(batch), "options": options}


class Decoder:
    """Decodes utterances by index: random encoder output (seeded by index) -> connector -> LLM, greedy."""

    def __init__(self, model, frames: np.ndarray, tokens: np.ndarray, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.frames, self.tokens, self.device, self.dtype = model, frames, tokens, device, dtype
        self.dim = model.encoder.output_size()

    def features(self, index: int) -> torch.Tensor:
        generator = torch.Generator(device=self.device).manual_seed(int(index))
        return torch.randn(int(self.frames[index]), self.dim, generator=generator, device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def batch(self, indices: list[int], options: DecodingOptions, max_tokens: int | None = None) -> list[list[int]]:
        lengths = torch.tensor([int(self.frames[i]) for i in indices], device=self.device)
        speech = torch.nn.utils.rnn.pad_sequence([self.features(i) for i in indices], batch_first=True)
        ones = torch.ones(len(indices), dtype=torch.long, device=self.device)
        speech_in = self.model.encode_speech(speech, lengths, lengths[:, None], ones, ones * 0)
        inputs = self.model.build_inputs(speech_in, torch.full((len(indices), 1), 100, device=self.device), ones)
        limits = [int(self.tokens[i]) if max_tokens is None else min(max_tokens, int(self.tokens[i])) for i in indices]
        return [h.ids for h in greedy_search(self.model, inputs, limits, options)]

    def run(self, indices: np.ndarray, batch_size: int, options: DecodingOptions) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for chunk in length_sorted_batches([int(self.frames[i]) for i in indices], batch_size):
            chosen = [int(indices[c]) for c in chunk]
            out.update(zip(chosen, self.batch(chosen, options)))
        return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def expected_seconds(
    load: dict[str, np.ndarray], batch_size: int, sync_every: int, bandwidth: float, tflops: float
) -> float:
    """Floor of the full-size test-set time with CUDA graphs: memory- or compute-bound steps, compute-bound prefill."""
    frames = np.rint(load["durations"] * FRAME_RATE).astype(int)
    prompt = 3 + np.ceil(frames / 5)
    total = prompt.sum() * FLOP_PER_TOKEN / (tflops * 1e12)
    for chunk in length_sorted_batches(frames.tolist(), batch_size):
        steps = int(load["tokens"][chunk].max()) + 2 * sync_every - 1
        slots = prompt[chunk].max() + steps
        read = WEIGHT_BYTES + len(chunk) * slots * KV_BYTES_PER_TOKEN
        step = max(read / (bandwidth * 1e12), len(chunk) * FLOP_PER_TOKEN / (tflops * 1e12))
        total += steps * step
    return round(float(total), 1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="shrunk configs on CPU (a functional test of the script)")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results", help="for gpu_decoding_<device>.json")
    parser.add_argument("--utts", type=int, help="utterances decoded per setting (default 1024; tiny 24)")
    parser.add_argument("--latency_utts", type=int, help="utterances decoded one at a time (default 8; tiny 2)")
    parser.add_argument("--settings", nargs="+", help="e.g. reference_b32 static_cudagraph_b256_sync2")
    parser.add_argument("--tokens_per_char", type=float, default=1.0)
    parser.add_argument("--bandwidth_tb_s", type=float, default=4.8, help="memory bandwidth for expected_s (H200: 4.8)")
    parser.add_argument("--tflops", type=float, default=800.0, help="attainable bf16 TFLOP/s for expected_s")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("gpu_decoding.py needs a CUDA GPU (torch.cuda.is_available() is False); use --tiny on CPU")
    defaults = DEFAULTS[args.tiny]
    utts = args.utts or defaults["utts"]
    settings = [parse_setting(name) for name in args.settings or defaults["settings"]]
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    slug = re.sub(r"[^A-Za-z0-9]+", "_", device_name).strip("_") + ("_tiny" if args.tiny else "")
    out_file = args.out / f"gpu_decoding_{slug}.json"
    args.out.mkdir(parents=True, exist_ok=True)

    load = sample_test_set(args.seed, args.tokens_per_char)
    rng = np.random.default_rng(args.seed + 1)
    subset = np.sort(rng.choice(len(load["durations"]), size=min(utts, len(load["durations"])), replace=False))
    latency_subset = subset[: args.latency_utts or defaults["latency_utts"]]
    frames = np.rint(load["durations"] * FRAME_RATE).astype(int)
    result = {
        "device": device_name, "tiny": args.tiny, "dtype": str(dtype), "environment": environment(),
        "load": describe(load, subset), "extrapolation": f"test_set_s = wall_s x {len(frames)} / {len(subset)}",
        "settings": [s["name"] for s in settings], "archs": {},
        "expected_s": {f"static_cudagraph_b{b}": expected_seconds(load, b, DecodingOptions().sync_every,
                                                                   args.bandwidth_tb_s, args.tflops)
                       for b in (1, 16, 32, 128, 256)},
        "expected_assumptions": f"{WEIGHT_BYTES / 1e9} GB weights read per step at {args.bandwidth_tb_s} TB/s, "
                                f"{args.tflops} TFLOP/s bf16, {KV_BYTES_PER_TOKEN} B of cache per token and row",
    }  # fmt: skip
    if args.tiny:
        result["note"] = ("tiny shapes on CPU: a functional run of the script, not a speed figure (expected_s is the "
                          "full-size arithmetic); full size: python bench/gpu_decoding.py --out bench/results/ on a GPU")
    started = time.perf_counter()

    def save() -> None:
        result["total_s"] = round(time.perf_counter() - started, 1)
        out_file.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    torch.manual_seed(args.seed)
    whisper = load_whisper_config(REPO / "conf/model_configs/whisper-large-v2")
    encoder_dim = TINY_OVERRIDES["whisper"]["d_model"] if args.tiny else whisper.d_model
    llm = build_llm(args.tiny, device, dtype)
    setup = {**FULL, **TINY_OVERRIDES} if args.tiny else FULL
    audio_s = float(load["durations"][subset].sum())
    for arch in ("adapter", "cross_attention"):  # the cross-attention connector converts the LLM's layers: last
        model = build_model(arch, llm, encoder_dim, setup[arch])
        decoder = Decoder(model, frames, load["tokens"], device, dtype)
        runs, outputs = [], {}
        for setting in settings:
            options = DecodingOptions(**NO_END, **setting["options"])
            decoder.batch([int(i) for i in subset[: setting["batch_size"]]], options, max_tokens=3)  # warm-up
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync(device)
            start = time.perf_counter()
            outputs[setting["name"]] = decoder.run(subset, setting["batch_size"], options)
            sync(device)
            wall = time.perf_counter() - start
            mine = outputs[setting["name"]]
            same = {name: f"{sum(ids == mine[i] for i, ids in other.items())}/{len(mine)}"
                    for name, other in outputs.items() if name != setting["name"]}  # fmt: skip
            runs.append({
                **setting, "utterances": len(subset), "audio_s": round(audio_s, 1),
                "generated_tokens": int(sum(len(ids) for ids in outputs[setting["name"]].values())),
                "wall_s": round(wall, 3), "utt_per_s": round(len(subset) / wall, 2), "rtf": round(wall / audio_s, 6),
                "test_set_s": round(wall * len(frames) / len(subset), 1),
                "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
                "same_ids_as": same,
                "workspaces": workspace_stats(model),
            })  # fmt: skip
            print(arch, json.dumps(runs[-1]), flush=True)
            release_workspaces(model)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            result["archs"][arch] = {"runs": runs}
            save()
        latency = []
        for kind in ("reference", "static", "static_cudagraph"):
            options = DecodingOptions(**NO_END, **parse_setting(f"{kind}_b1")["options"])
            decoder.batch([int(latency_subset[0])], options, max_tokens=3)  # warm-up
            times, tokens = [], 0
            for index in latency_subset:
                sync(device)
                start = time.perf_counter()
                tokens += len(decoder.batch([int(index)], options)[0])
                sync(device)
                times.append(time.perf_counter() - start)
            latency.append({"decoder": kind, "utterances": len(times), "mean_s": round(float(np.mean(times)), 4),
                            "ms_per_token": round(1000 * sum(times) / max(tokens, 1), 2)})  # fmt: skip
            print(arch, "batch-1", json.dumps(latency[-1]), flush=True)
            release_workspaces(model)
        result["archs"][arch]["batch1_latency"] = latency
        save()
    return result


if __name__ == "__main__":
    main()
