"""Fig. 2 of the paper for trained systems: gate values per layer, attention on speech per layer (PNG + JSON).

    python -m espnet2_ext.bin.analyze_speechllm --model_dir exp/encoder_decoder/phase{1,2,3} --out exp/encoder_decoder/analysis
    python -m espnet2_ext.bin.analyze_speechllm --model_dir exp/decoder_only/phase3 --out exp/decoder_only/analysis \\
        --data dump/enc/test/feats.scp --history_file data/test/history --num_utts 24

Encoder-decoder model dirs give ``gates.json``/``gates.png`` (``tanh(g_i)`` per layer, one curve per
dir). For a decoder-only last model dir and ``--data``, ``attention.json``/``attention.png`` hold the
average attention mass of the generated tokens on the speech tokens per layer, for ASR and (when the
model learnt it) NER with each of ``--histories`` previous utterances. The same ``--num_utts``
utterances are analysed for every history: those with enough predecessors, earliest in their
speaker's order first; their history text is the model's own decoding of the predecessors.
``--ngpu 1`` runs the model on the job's GPU (in ``--dtype``, ``auto``: bfloat16 there, float32
on the CPU); the features may be float16 or float32 dumps.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
import yaml
from espnet2.utils.nested_dict_action import NestedDictAction

from espnet2_ext.api import Speech2TextNER
from espnet2_ext.cli import add_verbose_argument, run_cli
from espnet2_ext.devices import DTYPE_CHOICES, device_for_ngpu, resolve_dtype
from espnet2_ext.feats_io import open_features
from espnet2_ext.speechllm.analysis import gate_values, plot_curves, speech_attention
from espnet2_ext.text.kaldi_text import read_history_file


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", type=Path, nargs="+", required=True, help="training dirs, e.g. phase1 phase2 phase3")
    parser.add_argument("--model_file", default="valid.acc.ave.pth")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--encoder_conf", action=NestedDictAction, default=dict(), help="encoder_conf overrides")
    parser.add_argument("--llm_conf", action=NestedDictAction, default=dict(), help="llm_conf overrides")
    parser.add_argument("--data", help="feats.scp the model reads (attention analysis)")
    parser.add_argument("--history_file", type=Path, help="'uttid prev_1 … prev_n' lines of --data")
    parser.add_argument("--num_utts", type=int, default=24)
    parser.add_argument("--histories", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--ngpu", type=int, default=0, help="0: CPU, 1: the job's GPU (an error when there is none)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                        help="model dtype (auto: bfloat16 on a GPU, float32 on the CPU)")
    add_verbose_argument(parser)
    return parser


def analysis_keys(history: dict[str, list[str]], keys: list[str], depth: int, count: int) -> tuple[list[str], list[str]]:
    """``count`` target utterances with ``depth`` predecessors (fewest first) and every utterance to decode."""
    targets = sorted((u for u in keys if len(history.get(u, [])) >= depth), key=lambda u: (len(history[u]), u))[:count]
    if not targets:
        raise ValueError(f"no utterance has {depth} previous utterances in the history file")
    needed, stack = set(), list(targets)
    while stack:
        uid = stack.pop()
        if uid not in needed:
            needed.add(uid)
            stack.extend(history[uid][-depth:] if depth else [])
    return targets, [u for u in keys if u in needed]


def attention_curves(engine: Speech2TextNER, args: argparse.Namespace) -> dict[str, list[float]]:
    feats = open_features(args.data)
    history = read_history_file(args.history_file) if args.history_file else {u: [] for u in feats}
    targets, keys = analysis_keys(history, list(feats), max(args.histories), args.num_utts)
    tasks = ["asr"] + (["ner"] if "cot_ner" in engine.trained_tasks else [])
    curves: dict[str, list[float]] = {}
    for task in tasks:
        for k in args.histories:
            if k and engine.trained_tasks == ["short_asr"]:
                continue
            hyps = engine.decode_long_form(feats, keys, history, k, task) if k else {}
            requests = [engine.history_request(u, feats, history[u][-k:] if k else [], hyps) for u in targets]
            total = torch.zeros(0)
            for start in range(0, len(requests), args.batch_size):
                batch = requests[start : start + args.batch_size]
                values = torch.tensor(speech_attention(engine, batch, task)) * len(batch)
                total = values if total.numel() == 0 else total + values
            curves[f"{task}, {k} history"] = (total / len(requests)).tolist()
            logging.info("%s with %d history: %s", task, k, [round(v, 3) for v in curves[f"{task}, {k} history"]])
    return curves


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    device = device_for_ngpu(args.ngpu)
    args.out.mkdir(parents=True, exist_ok=True)
    configs = {d: yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) for d in args.model_dir}
    gated = [d for d, c in configs.items() if c["connector"] == "cross_attention"]
    if gated:
        gates = {d.name: gate_values(torch.load(d / args.model_file, map_location="cpu", weights_only=True)) for d in gated}
        (args.out / "gates.json").write_text(json.dumps(gates, indent=2) + "\n", encoding="utf-8")
        plot_curves(gates, "tanh(gate)", "Cross-attention gate per layer", args.out / "gates.png")
    last = args.model_dir[-1]
    if configs[last]["connector"] == "adapter" and args.data:
        engine = Speech2TextNER.from_config(
            last / "config.yaml", last / args.model_file, args.encoder_conf, args.llm_conf,
            device=device, dtype=resolve_dtype(args.dtype, device), batch_size=args.batch_size,
        )
        curves = attention_curves(engine, args)
        result = {"model": str(last / args.model_file), "data": args.data, "num_utts": args.num_utts, "curves": curves}
        (args.out / "attention.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        plot_curves(curves, "attention on speech tokens", "Attention mass on speech per layer", args.out / "attention.png")
    logging.info("analysis written to %s", args.out)


if __name__ == "__main__":
    sys.exit(run_cli(main))
