"""Print parameter counts per component of a training config as JSON, without loading any weights.

    python -m espnet2_ext.bin.count_params --config conf/tuning/train_decoder_only_phase1.yaml \
        --llm_config conf/model_configs/chatglm3-6b --whisper_config conf/model_configs/whisper-large-v2

The model is built on the meta device from configs alone. ``--llm_config`` / ``--whisper_config``
(a directory with ``config.json``) stand in for the checkpoint paths of the YAML, which are
placeholders until a recipe sets them; ``--whisper_config`` also counts the frozen Whisper
encoder when the config trains on cached encoder outputs. ``lora_by_projections`` gives the LoRA size
with each ``lora_conf projections`` setting (the paper's ``attention``: 15.1M at rank 32 on ChatGLM3-6B;
``all``: 66.6M), whichever the config uses (``lora``). Other task options may follow
(e.g. ``--llm_finetune frozen``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from espnet2_ext.cli import add_verbose_argument, run_cli
from espnet2_ext.speechllm.lora import LORA_PROJECTIONS
from espnet2_ext.speechllm.param_table import parameter_counts

with contextlib.redirect_stdout(sys.stderr):  # ESPnet prints a flash-attention notice on import; stdout is JSON
    from espnet2_ext.speechllm.backbones import WhisperSpeechEncoder
    from espnet2_ext.tasks.speechllm import SpeechLLMTask

LORA_NOTE = (
    "The paper reports 15M LoRA parameters for rank 32 on attention and FFN; rank 32 on all ChatGLM3-6B "
    "projections is ~59M with the fused query_key_value (66.6M with q/k/v split): 15M is rank 32 on the "
    "attention projections (query_key_value + dense), lora_conf projections=attention. lora_by_projections "
    "counts the config's LoRA rank and alpha with each projections setting."
)


def count(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="training YAML")
    parser.add_argument("--llm_config", help="ChatGLM3 directory with config.json (replaces llm_conf.path)")
    parser.add_argument("--whisper_config", help="Whisper directory with config.json (replaces encoder_conf.path)")
    add_verbose_argument(parser)
    ours, rest = parser.parse_known_args(argv)
    args = SpeechLLMTask.get_parser().parse_args(["--config", ours.config, *rest])
    if ours.llm_config:
        args.llm_conf["path"] = ours.llm_config
    if ours.whisper_config and args.encoder == "whisper":
        args.encoder_conf["path"] = ours.whisper_config
    model = SpeechLLMTask.build_model_on(args, meta=True)
    counts = parameter_counts(model)
    lora_by_projections = {}
    if args.llm_finetune == "lora" and "target_modules" not in args.lora_conf:
        for projections in LORA_PROJECTIONS:
            args.lora_conf["projections"] = projections
            lora_by_projections[projections] = parameter_counts(SpeechLLMTask.build_model_on(args, meta=True))["lora"]["total"]
    if args.encoder != "whisper" and ours.whisper_config:
        whisper = WhisperSpeechEncoder(ours.whisper_config, meta=True)
        counts["whisper"]["total"] = sum(p.numel() for p in whisper.parameters())
        counts["all"]["total"] += counts["whisper"]["total"]
    result = {name: counts[name]["total"] for name in ("whisper", "connector", "llm_base", "lora")}
    result.update(trainable=counts["all"]["trainable"], total=counts["all"]["total"], components=counts)
    result.update(lora_by_projections=lora_by_projections, lora_note=LORA_NOTE)
    return result


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(count(argv), indent=2))


if __name__ == "__main__":
    sys.exit(run_cli(main))
