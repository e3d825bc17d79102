"""Summarise ``bench/gpu_recipe.sh``'s training runs as JSON: step time, tokens/s, MFU, peak memory vs plan_memory.

Per run (``WORK/exp/<run>``: ``train_args``, ``train.log``, ``peak_memory.json``):

* **step time**: ESPnet's ``train_time`` (wall seconds per optimizer update of ``accum_grad``
  batches, data loading included), averaged over the logged intervals of each epoch but its first
  (cuBLAS/allocator warm-up, data-loader start); the epoch means are reported too;
* **tokens/s**: the LLM tokens of those iterations (stacked speech incl. γ + prefix, prompt, target,
  eos; padding excluded), counted from the token-budget schedule the run trained on
  (:mod:`token_schedule`), divided by their time;
* **MFU** = model FLOPs of those iterations / their time / the GPU's dense bf16 peak (989.4 TFLOP/s
  for H100/H200 SXM). Model FLOPs per example (``T`` LLM positions: speech + text for the decoder-only
  model, text for the encoder-decoder one; ``S`` speech tokens; ``Y`` scored targets; ``L`` layers)::

      4·N_frozen·T + 6·N_lora·T + 12·L·d_attn·T² + 4·H·V·Y + 6·N_conn,S·S
      (+ 6·N_conn,T·T + 12·L·d_xatt·T·S for cross-attention)

  frozen weights cost a forward and an input-gradient matmul (2 + 2 per weight and token),
  trainable ones also a weight gradient (6), attention's QKᵀ and AV 3 × 4·T·d per token and layer
  (full square, as the padding-masked SDPA computes it), the frozen head runs on targets only.
  Recomputation by activation checkpointing is not counted (that would be hardware FLOPs);
* **peak memory**: ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` of the training
  process, next to ``python -m espnet2_ext.bin.plan_memory``'s ``peak_gib`` for the same arguments
  and its parts; ``peak_gib`` adds a reserve (3 GiB + 5%) to the allocated estimate, so the allocated
  peak compares with the estimate before the reserve, the reserved peak with ``peak_gib``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from collections.abc import Iterable
from contextlib import redirect_stdout
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from token_schedule import RunSchedule  # noqa: E402

from espnet2_ext.bin import plan_memory  # noqa: E402
from espnet2_ext.speechllm.memory_plan import RESERVE_BYTES, RESERVE_FRACTION  # noqa: E402
from espnet2_ext.tasks.speechllm import SpeechLLMTask  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}  # dense, SXM
PLAN_GPU_MEM_GIB = 80  # the README's target GPU
_INTERVAL = re.compile(r"(\d+)epoch:train:(\d+)-(\d+)batch: (.*)")
_EPOCH = re.compile(r"(\d+)epoch results: \[train\] (.*?)(?:, \[valid\] (.*))?$")
_VALUE = re.compile(r"([A-Za-z_]\w*)=(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)")  # ESPnet sometimes drops the comma
FLOPS_FORMULA = (
    "per example: 4*N_frozen*T + 6*N_lora*T + 12*L*d_attn*T^2 + 4*H*V*Y + 6*N_conn_speech*S "
    "(+ 6*N_conn_text*T + 12*L*d_xatt*T*S for cross-attention); T = LLM positions (speech + text, or text "
    "for the encoder-decoder), S = speech tokens, Y = scored targets; recomputation not counted; "
    "MFU = model FLOPs / train_time / dense bf16 peak"
)


def values(text: str) -> dict[str, float]:
    return {key: float(value) for key, value in _VALUE.findall(text)}


@dataclass(frozen=True)
class Interval:
    epoch: int
    first: int  # 1-based iterations, inclusive
    last: int
    stats: dict[str, float]


def parse_log(lines: Iterable[str]) -> tuple[list[Interval], dict[int, dict], dict[int, dict]]:
    """ESPnet's interval lines and per-epoch train/valid summaries."""
    intervals, train, valid = [], {}, {}
    for line in lines:
        if (match := _INTERVAL.search(line)) is not None:
            epoch, first, last, rest = match.groups()
            intervals.append(Interval(int(epoch), int(first), int(last), values(rest)))
        elif (match := _EPOCH.search(line)) is not None:
            train[int(match[1])] = values(match[2])
            valid[int(match[1])] = values(match[3] or "")
    return intervals, train, valid


@dataclass(frozen=True)
class FlopModel:
    """Parameter counts of a config's model (built on the meta device) that the FLOPs formula needs."""

    layers: int
    attn_width: int
    head: int  # H·V
    frozen: int  # frozen matmul weights in the LLM layers
    lora: int
    conn_speech: int  # connector weights applied per speech token
    conn_text: int  # connector weights applied per LLM position (cross-attention query/out)
    xatt_width: int
    cross_attention: bool

    @classmethod
    def of(cls, args: argparse.Namespace) -> FlopModel:
        model = SpeechLLMTask.build_model_on(args, meta=True)
        config = model.llm.config
        frozen = lora = conn_speech = conn_text = 0
        for name, param in model.named_parameters():
            if param.dim() != 2:
                continue
            if name.startswith("connector."):
                per_text = re.search(r"\.blocks\.\d+\.(query|out)\.", name) is not None
                conn_text += param.numel() if per_text else 0
                conn_speech += 0 if per_text else param.numel()
            elif "lora_" in name:
                lora += param.numel()
            elif ".layers." in name:
                frozen += param.numel()
        xatt = model.connector.blocks[0].query.out_features if model.uses_cross_attention else 0
        return cls(config.num_hidden_layers, config.num_attention_heads * config.head_dim,
                   model.llm.lm_head.weight.numel(), frozen, lora, conn_speech, conn_text, xatt,
                   model.uses_cross_attention)  # fmt: skip

    def example(self, speech: int, text: int, targets: int) -> float:
        llm = text if self.cross_attention else speech + text
        flops = 4 * self.frozen * llm + 6 * self.lora * llm + 12 * self.layers * self.attn_width * llm**2
        flops += 4 * self.head * targets + 6 * self.conn_speech * speech
        if self.cross_attention:
            flops += 6 * self.conn_text * llm + 12 * self.layers * self.xatt_width * llm * speech
        return float(flops)


def plan(argv: list[str], gpu_mem: float) -> dict:
    """plan_memory for the run's own arguments: --config and the LLM path as its options, the rest passed through.

    (``--llm_conf`` must not reach plan_memory's parser, which would take it for ``--llm_config``.)
    """
    pairs = dict(zip(argv[::2], argv[1::2]))
    rest = [a for k, v in zip(argv[::2], argv[1::2]) if k not in ("--config", "--llm_conf") for a in (k, v)]
    llm = pairs["--llm_conf"].removeprefix("path=")
    with redirect_stdout(sys.stderr):
        return plan_memory.run(["--config", pairs["--config"], "--llm_config", llm, "--gpu_mem", str(gpu_mem), *rest])


def summarise_run(exp: Path, peak_tflops: float | None) -> dict:
    argv = (exp / "train_args").read_text(encoding="utf-8").splitlines()
    schedule = RunSchedule(argv)
    args = schedule.args
    pairs = list(zip(argv[::2], argv[1::2]))
    result: dict = {
        "config": str(Path(args.config).resolve().relative_to(REPO)),
        "options_besides_paths": [f"{k} {v}" for k, v in pairs if k != "--config" and "/" not in v],
        "batch_bins": args.batch_bins, "accum_grad": args.accum_grad,
    }  # fmt: skip
    planned = plan(argv, PLAN_GPU_MEM_GIB)
    result["plan_memory"] = {k: planned[k] for k in ("peak_gib", "weights_gib", "trainable_and_optimizer_gib",
                                                     "activations_gib", "reserve_gib", "fits")}  # fmt: skip
    peak_file = exp / "peak_memory.json"
    log_file = exp / "train.log"
    if (exp / "skipped").is_file():
        result["error"] = (exp / "skipped").read_text().strip()
        return result
    if not peak_file.is_file() or not log_file.is_file():
        result["error"] = f"no {peak_file.name}: the run did not finish"
        return result
    status = (exp / "exit_status").read_text().strip() if (exp / "exit_status").is_file() else "0"
    if status != "0":
        result["error"] = f"training exited with status {status}; what follows covers the epochs it finished"
    peak = json.loads(peak_file.read_text())
    intervals, train, valid = parse_log(log_file.read_text(encoding="utf-8", errors="replace").splitlines())
    if not train:
        tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
        result["error"] = "no epoch finished; log ends: " + " | ".join(tail)
        return result

    flops = FlopModel.of(args)
    epochs = sorted(train)
    batches = {epoch: schedule.batches(epoch) for epoch in epochs}
    tokens = {e: [[schedule.tokens(u, e) for u in batch] for batch in batches[e]] for e in epochs}
    real = sum(t.speech + t.text for e in epochs for b in tokens[e] for t in b)
    computed = sum(len(b) * max(t.speech + t.text for t in b) for e in epochs for b in tokens[e])
    iterations = sum(len(batches[e]) for e in epochs)
    logged = int(train[epochs[-1]].get("total_count", iterations))
    finished = [i for i in intervals if i.epoch in train and "train_time" in i.stats]
    if not finished:  # fewer iterations than log_interval: whole epochs, from the epoch means
        finished = [Interval(e, 1, len(batches[e]) // args.accum_grad * args.accum_grad, train[e]) for e in epochs]
    steady = [i for i in finished if i.first > 1] or finished
    window_time = window_tokens = window_flops = 0.0
    for interval in steady:
        updates = (interval.last - interval.first + 1) / args.accum_grad
        window_time += interval.stats["train_time"] * updates
        for batch in tokens[interval.epoch][interval.first - 1 : interval.last]:
            window_tokens += sum(t.speech + t.text for t in batch)
            window_flops += sum(flops.example(t.speech, t.text, t.targets) for t in batch)
    step_time = window_time / sum((i.last - i.first + 1) / args.accum_grad for i in steady)
    result.update({
        "epochs": len(epochs),
        "iterations": iterations, "iterations_logged_by_espnet": logged,
        "updates": iterations // args.accum_grad,
        "utterances_per_iteration": round(sum(len(b) for e in epochs for b in batches[e]) / iterations, 2),
        "tokens": {"real": real, "computed": computed, "padding_fraction": round(1 - real / computed, 4),
                   "per_iteration": round(real / iterations, 1)},
        "steady_window": [[i.epoch, i.first, i.last] for i in steady],
        "step_time_s": round(step_time, 4),
        "iteration_time_s": round(step_time / args.accum_grad, 4),
        "epoch_mean_step_time_s": [train[e].get("train_time") for e in epochs],
        "tokens_per_s": round(window_tokens / window_time, 1),
        "model_tflops_per_s": float(f"{window_flops / window_time / 1e12:.4g}"),
        "mfu": round(window_flops / window_time / (peak_tflops * 1e12), 4) if peak_tflops else None,
        "process_wall_s": peak["process_wall_s"],
        "train_loss_per_epoch": [train[e].get("loss") for e in epochs],
        "valid_loss_per_epoch": [valid[e].get("loss") for e in epochs],
        "parameters": {"frozen_llm_matmul": flops.frozen, "lora": flops.lora,
                       "connector": flops.conn_speech + flops.conn_text, "head": flops.head},
    })  # fmt: skip
    allocated, reserved = peak["max_memory_allocated_gib"], peak["max_memory_reserved_gib"]
    before_reserve = (planned["peak_gib"] - RESERVE_BYTES / 2**30) / (1 + RESERVE_FRACTION)
    result["memory"] = {
        "max_allocated_gib": allocated,
        "max_reserved_gib": reserved,
        "espnet_gpu_max_cached_mem_gib": train[epochs[-1]].get("gpu_max_cached_mem_GB"),
        "planned_peak_gib": planned["peak_gib"],
        "planned_before_reserve_gib": round(before_reserve, 2),
        "reserved_over_planned": round(reserved / planned["peak_gib"], 3) if reserved else None,
        "allocated_over_planned_before_reserve": round(allocated / before_reserve, 3) if allocated else None,
    }
    return result


def environment() -> dict:
    versions = {}
    for name in ("torch", "transformers", "peft", "espnet", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2), **versions, "cuda": torch.version.cuda}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--total_s", type=float, help="the whole script's wall time so far")
    parser.add_argument("--peak_tflops", type=float, help="dense bf16 peak of the GPU (default: by its name)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.cuda.get_device_name() if cuda else "cpu"
    peak_tflops = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device), None)
    prepared = json.loads((args.work / "prepare.json").read_text())
    runs = {}
    for line in (args.work / "runs.tsv").read_text().splitlines():
        name, exp = line.split("\t")
        runs[name] = summarise_run(Path(exp), peak_tflops if cuda else None)
    result = {
        "device": device,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "peak_bf16_tflops": peak_tflops if cuda else None,
        "tiny": args.tiny,
        "environment": environment(),
        "setup": {k: prepared[k] for k in ("train_utterances", "dev_utterances", "speakers", "target_iterations")},
        "prepare_s": prepared["timings"],
        "total_s": args.total_s,
        "mfu_formula": FLOPS_FORMULA,
        "notes": [
            "tokens: LLM tokens as batch_bins counts them (stacked speech incl. gamma, [gMASK] sop, prompt, target, "
            "eos), padding excluded; step = one optimizer update of accum_grad batches (ESPnet's train_time)",
            "train_loss_per_epoch is ESPnet's logged value, which is the loss divided by accum_grad (the trainer's "
            "in-place loss /= accum_grad also scales the stats tensor the model returned); valid loss is unscaled",
        ],
        "runs": runs,
    }
    result["failed_runs"] = sorted(name for name, run in runs.items() if "error" in run)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
