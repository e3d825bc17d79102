"""Predict the peak GPU memory of a training config before launching it, as JSON.

    python -m espnet2_ext.bin.plan_memory --config conf/tuning/train_decoder_only_phase1.yaml \
        --llm_config conf/model_configs/chatglm3-6b --whisper_config conf/model_configs/whisper-large-v2 \
        --gpu_mem 80 [--ngpu 8 --num_nodes 2] [--check]

The model is built on the meta device from the configs (no weights read); see
:mod:`espnet2_ext.speechllm.memory_plan` for what is counted. ``peak_gib`` is per GPU; ``fits``
says whether it is within ``--gpu_mem`` GiB; ``largest_fitting_batch_bins`` is the largest token
budget that would fit. ``--check`` exits with one line naming the knobs when the config does not
fit (the stage engine runs it before each GPU training phase). Other task options may follow
(e.g. ``--batch_bins 8000 --activation_checkpointing false``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from contextlib import redirect_stdout

from espnet2_ext.cli import add_verbose_argument, run_cli
from espnet2_ext.errors import UserError

PROMPT_TOKENS = 4  # [gMASK] sop, |asr| (one piece or a few), eos


class DoesNotFit(UserError):
    """The config's predicted peak exceeds the GPU memory."""


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="training YAML")
    parser.add_argument("--llm_config", help="ChatGLM3 directory with config.json (replaces llm_conf.path)")
    parser.add_argument("--whisper_config", help="Whisper directory with config.json (replaces encoder_conf.path)")
    parser.add_argument("--gpu_mem", type=float, required=True, help="memory of one GPU in GiB")
    parser.add_argument("--ngpu", type=int, default=1, help="GPUs per node (DDP, one process each)")
    parser.add_argument("--num_nodes", type=int, default=1, help="nodes")
    parser.add_argument("--max_text_tokens", type=int, default=256,
                        help="longest target + history text of one example in LLM tokens (bounds the batch's shape)")
    parser.add_argument("--max_text_fraction", type=float, default=0.6,
                        help="largest share of text tokens in a batch (bounds the targets and the XATT LLM sequence)")
    parser.add_argument("--check", action="store_true", help="exit with an error naming the knobs when it does not fit")
    add_verbose_argument(parser)
    return parser


def run(argv: list[str] | None = None) -> dict:
    ours, rest = get_parser().parse_known_args(argv)
    with redirect_stdout(sys.stderr):  # some ESPnet modules print on import; stdout carries only the JSON
        from espnet2_ext.speechllm.memory_plan import plan
        from espnet2_ext.tasks.speechllm import SpeechLLMTask

        return _plan(ours, rest, SpeechLLMTask, plan)


def _plan(ours: argparse.Namespace, rest: list[str], task, plan) -> dict:
    args = task.get_parser().parse_args(["--config", ours.config, *rest])
    if ours.llm_config:
        args.llm_conf["path"] = ours.llm_config
    if ours.whisper_config and args.encoder == "whisper":
        args.encoder_conf["path"] = ours.whisper_config
    model = task.build_model_on(args, meta=True)
    frames = round(args.preprocessor_conf.get("max_input_seconds", 30.0) * model.encoder.frames_per_second)
    encoder_frames = model.encoder.output_lengths(frames) if args.encoder == "whisper" else frames
    max_example = math.ceil(encoder_frames / model.connector.stack) + 1 + ours.max_text_tokens + PROMPT_TOKENS
    result = plan(model, args, ours.gpu_mem, ours.ngpu * ours.num_nodes, max_example, ours.max_text_fraction)
    result["config"] = ours.config
    if ours.check and not result.get("fits", True):
        raise DoesNotFit(
            f"{ours.config}: predicted peak {result['peak_gib']} GiB per GPU exceeds --gpu_mem {ours.gpu_mem}: "
            f"lower batch_bins to <= {result['largest_fitting_batch_bins']} (and raise accum_grad to keep the "
            "utterances per update), or set activation_checkpointing true"
        )
    return result


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(argv), indent=2))


if __name__ == "__main__":
    sys.exit(run_cli(main))
