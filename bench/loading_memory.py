"""Host memory peak of loading a sharded ChatGLM3 checkpoint into bf16 (``load_chatglm3``), on CPU.

Writes a random ChatGLM3 checkpoint in the upstream layout (fp16 ``pytorch_model-*.bin`` shards
+ index, or safetensors), then, in a fresh process per case, resets the peak-RSS counter
(``/proc/self/clear_refs``), loads it, and reads ``VmHWM``: the peak resident set above what the
process held before loading, relative to the size of the loaded bf16 model. The ``naive`` case
reads every shard into one state dict first and casts afterwards (what the loader did before it
streamed): about 2× the model. Streaming holds the model plus the memory-mapped pages of the
shard being read, so the peak is about ``1 + largest shard / model`` (ChatGLM3-6B's seven fp16
shards of ≤ 1.8 GB: ≈ 1.15); the second setup, whose 65k-row embedding alone is 30% of the
model, shows that bound. Writes ``bench/results/loading_memory.json``.

    python bench/loading_memory.py [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

MEASURE = r"""
import json, sys, torch
from pathlib import Path
from espnet2_ext.speechllm.chatglm3 import load_chatglm3, chatglm3_config_to_glm, convert_chatglm3_state_dict
def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
path, case = sys.argv[1], sys.argv[2]
if case == "naive":
    import json as _j
    from transformers import GlmForCausalLM
    cfg = _j.loads((Path(path) / "config.json").read_text())
Path("/proc/self/clear_refs").write_text("5")
before = status("VmRSS")
if case == "naive":
    index = _j.loads((Path(path) / "pytorch_model.bin.index.json").read_text())["weight_map"]
    state = {}
    for shard in sorted(set(index.values())):
        state.update(torch.load(Path(path) / shard, weights_only=True))
    state = convert_chatglm3_state_dict(state, cfg)
    with torch.device("meta"):
        model = GlmForCausalLM(chatglm3_config_to_glm(cfg))
    model.load_state_dict({k: v.to(torch.bfloat16) for k, v in state.items()}, assign=True)
    del state
else:
    model = load_chatglm3(path, dtype=torch.bfloat16)
model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"rss_before": before, "peak": status("VmHWM"), "after": status("VmRSS"), "model_bytes": model_bytes}))
"""


def write_checkpoint(out: Path, hidden: int, layers: int, ffn: int, vocab: int, shards: int, safetensors: bool) -> int:
    """A random fp16 ChatGLM3 checkpoint in ``shards`` shards; returns its size in bytes."""
    from espnet2_ext.speechllm.chatglm3 import chatglm3_config_to_glm, glm_state_dict_to_chatglm3
    from espnet2_ext.upstream_formats import save_chatglm3_checkpoint, tiny_chatglm3_config
    from transformers import GlmForCausalLM

    cfg = tiny_chatglm3_config(vocab_size=vocab, hidden=hidden, layers=layers, heads=16, kv_groups=2, ffn=ffn)
    cfg["torch_dtype"] = "float16"
    with torch.device("meta"):
        shapes = GlmForCausalLM(chatglm3_config_to_glm(cfg)).state_dict()
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(v.shape, generator=generator) * 0.02).half() for k, v in shapes.items()}
    state = glm_state_dict_to_chatglm3(state, cfg)
    size = sum(t.numel() * t.element_size() for t in state.values())
    save_chatglm3_checkpoint(state, cfg, out, shard_size=size // shards + 1, safetensors=safetensors)
    return size


def measure(path: Path, case: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(path), case], capture_output=True, text=True,
                          cwd=REPO, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["peak_over_model"] = round((result["peak"] - result["rss_before"]) / result["model_bytes"], 3)
    return result


SETUPS = {
    "mid": dict(hidden=1024, layers=12, ffn=3072, vocab=32000, shards=8),
    "embedding_heavy": dict(hidden=1024, layers=8, ffn=2816, vocab=65024, shards=8),
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--cases", nargs="+", default=["bin", "safetensors", "naive"])
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/loading_memory.json")
    args = parser.parse_args(argv)
    result = {}
    for name in args.setups:
        setup = SETUPS[name]
        row = result[name] = {"setup": setup}
        with tempfile.TemporaryDirectory() as tmp:
            for case in args.cases:
                safetensors = case == "safetensors"
                path = Path(tmp) / ("st" if safetensors else "bin")
                if not path.exists():
                    row["checkpoint_bytes"] = write_checkpoint(path, safetensors=safetensors, **setup)
                row[case] = measure(path, case)
                print(name, case, row[case], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
