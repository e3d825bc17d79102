"""Pack the trained parts of a speech-LLM experiment for ``Speech2TextNER.from_pretrained``.

    python -m espnet2_ext.bin.pack_model --model_dir exp/decoder_only/phase3 \\
        --model_file valid.acc.ave.pth --out exp/decoder_only/packed [--pad_to_30s true]

Writes ``model.pth`` (the checkpoint as trained: connector, γ, gates and LoRA, or the whole LLM in
``full`` mode), ``config.yaml`` (the training config with the Whisper/ChatGLM3 paths replaced by
placeholders, the tokenizer by the packed copy, data paths dropped), ``tokenizer.model``,
``meta.json`` (parameter counts, source, sha256, and ``input``: the settings the training input
was made with) and ``README.md``. The frozen Whisper and ChatGLM3 weights are never packed: the
checkpoint's keys are checked against the model's trainable parameters (built on the meta device
from the configs, no weights read), and a checkpoint holding frozen weights is refused.

``input`` holds ``input_type`` (``encoder_output`` or ``mel``), ``pad_to_30s``, ``n_mels``,
``sample_rate`` and the connector's ``stack`` (not the dumps' float16/float32 storage, which does
not change what the model hears). For log-mel input they come from the training config;
for cached encoder outputs from the ``feats_conf.json`` that ``bin/dump_feats.py`` wrote next to the
training ``feats.scp``. Features dumped before that record existed need ``--pad_to_30s`` (as they
were dumped); a value that contradicts the record is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch
import yaml
from espnet2.utils.types import str2bool

from espnet2_ext.checkpoint_io import load_state_file
from espnet2_ext.cli import add_verbose_argument, run_cli
from espnet2_ext.speechllm.espnet_model import SpeechLLMModel
from espnet2_ext.speechllm.input_settings import FeatureSettings, read_feature_settings, settings_file
from espnet2_ext.speechllm.param_table import parameter_counts
from espnet2_ext.tasks.speechllm import SpeechLLMTask

PLACEHOLDERS = {"encoder_conf": "PLACEHOLDER_WHISPER", "llm_conf": "PLACEHOLDER_CHATGLM3_DIR"}
DATA_KEYS = (
    "train_data_path_and_name_and_type", "valid_data_path_and_name_and_type",
    "train_shape_file", "valid_shape_file", "output_dir", "init_param",
)  # fmt: skip


def check_checkpoint(model: SpeechLLMModel, state: dict[str, torch.Tensor]) -> dict:
    """Parameter counts of ``model`` (on the meta device); raises unless ``state`` is its trainable part."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    frozen = sorted(set(state) - set(trainable))
    if frozen:
        raise ValueError(f"checkpoint holds {len(frozen)} non-trainable tensor(s), e.g. {frozen[:3]}; refusing to pack base weights")
    missing = sorted(set(trainable) - set(state))
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} trainable parameter(s), e.g. {missing[:3]}")
    wrong = [n for n, v in state.items() if v.shape != trainable[n].shape]
    if wrong:
        raise ValueError(f"checkpoint shapes differ from the config's model: {wrong[:3]}")
    return parameter_counts(model)


def training_input(config: dict, model: SpeechLLMModel, pad_to_30s: bool | None) -> dict:
    """The settings the training input was made with (see the module docstring)."""
    if config["encoder"] == "whisper":
        whisper = model.encoder.whisper
        recorded: FeatureSettings | None = FeatureSettings("mel", whisper.pad_to_30s, whisper.config.num_mel_bins)
        source = "the training config's encoder_conf"
    else:
        scps = [entry[0] for entry in config.get("train_data_path_and_name_and_type", []) if entry[1] == "speech"]
        if len(scps) != 1:
            raise ValueError(f"the training config names {len(scps)} speech inputs, expected one")
        source = settings_file(scps[0])
        recorded = read_feature_settings(source)
        if recorded is not None and recorded.input_type != "encoder_output":
            raise ValueError(f"{source}: {recorded.input_type} features, but the model reads encoder outputs")
    if recorded is None:
        if pad_to_30s is None:
            raise ValueError(
                f"{source} not found (features dumped before it was recorded): cannot tell whether the training "
                "encoder outputs were computed on 30-s padded input; give --pad_to_30s as they were dumped"
            )
        recorded = FeatureSettings("encoder_output", pad_to_30s, n_mels=None)
    elif pad_to_30s is not None and pad_to_30s != recorded.pad_to_30s:
        raise ValueError(f"--pad_to_30s {pad_to_30s} contradicts {source} (pad_to_30s {recorded.pad_to_30s})")
    return {**recorded.input_settings(), "stack": model.connector.stack}


def pack(model_dir: Path, model_file: str, out: Path, pad_to_30s: bool | None = None) -> Path:
    config = yaml.safe_load((model_dir / "config.yaml").read_text(encoding="utf-8"))
    checkpoint = model_dir / model_file
    state = load_state_file(checkpoint)
    model = SpeechLLMTask.build_model_on(argparse.Namespace(**config), meta=True)
    counts = check_checkpoint(model, state)
    settings = training_input(config, model, pad_to_30s)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, out / "model.pth")
    shutil.copyfile(config["tokenizer_file"], out / "tokenizer.model")
    packed = {k: v for k, v in config.items() if k not in DATA_KEYS}
    for key, placeholder in PLACEHOLDERS.items():
        if "path" in packed.get(key, {}):
            packed[key] = {**packed[key], "path": placeholder}
    packed["tokenizer_file"] = "tokenizer.model"
    packed["preprocessor_conf"] = {k: v for k, v in config.get("preprocessor_conf", {}).items() if k != "history_file"}
    (out / "config.yaml").write_text(yaml.safe_dump(packed, allow_unicode=True, sort_keys=False), encoding="utf-8")
    meta = {
        "source": str(model_dir / model_file),
        "sha256": hashlib.sha256((out / "model.pth").read_bytes()).hexdigest(),
        "encoder": config["encoder"], "connector": config["connector"], "llm_finetune": config["llm_finetune"],
        "packed_parameters": sum(v.numel() for v in state.values()),
        "parameters": counts,
        "input": settings,
    }  # fmt: skip
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(
        f"# Packed speech-LLM ({config['connector']}, {config['llm_finetune']})\n\n"
        f"Trained parts only ({meta['packed_parameters']:,} parameters) from `{meta['source']}`; "
        "the frozen Whisper encoder and ChatGLM3 weights are NOT included.\n\n"
        f"Trained on {settings['input_type']} input at {settings['sample_rate']} Hz, pad_to_30s "
        f"{settings['pad_to_30s']}, {settings['stack']} frames stacked; `from_pretrained` makes its input "
        "the same way (`meta.json`, `input`).\n\n"
        "```python\nfrom espnet2_ext.api import Speech2TextNER\n"
        "s2t = Speech2TextNER.from_pretrained(PACKED_DIR, whisper=WHISPER_PATH, llm=CHATGLM3_DIR)\n"
        "print(s2t('utt.wav')[0].text)\n```\n\nParameter counts per component: `meta.json`.\n",
        encoding="utf-8",
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", type=Path, required=True)
    parser.add_argument("--model_file", default="valid.acc.ave.pth")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pad_to_30s", type=str2bool, default=None,
                        help="whether the training encoder outputs were computed on 30-s padded input "
                        "(only needed for features dumped without feats_conf.json)")
    add_verbose_argument(parser)
    args = parser.parse_args(argv)
    print(pack(args.model_dir, args.model_file, args.out, args.pad_to_30s))


if __name__ == "__main__":
    sys.exit(run_cli(main))
