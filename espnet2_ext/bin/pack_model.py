"""Pack the trained parts of a speech-LLM experiment for ``Speech2TextNER.from_pretrained``.

    python -m espnet2_ext.bin.pack_model --model_dir exp/decoder_only/phase3 \\
        --model_file valid.acc.ave.pth --out exp/decoder_only/packed

Writes ``model.pth`` (the checkpoint as trained: connector, γ, gates and LoRA, or the whole LLM in
``full`` mode), ``config.yaml`` (the training config with the Whisper/ChatGLM3 paths replaced by
placeholders, the tokenizer by the packed copy, data paths dropped), ``tokenizer.model``,
``meta.json`` (parameter counts, source, sha256) and ``README.md``. The frozen Whisper and
ChatGLM3 weights are never packed: the checkpoint's keys are checked against the model's
trainable parameters (built on the meta device from the configs, no weights read), and a
checkpoint holding frozen weights is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import torch
import yaml

from espnet2_ext.speechllm.param_table import parameter_counts
from espnet2_ext.tasks.speechllm import SpeechLLMTask

PLACEHOLDERS = {"encoder_conf": "PLACEHOLDER_WHISPER", "llm_conf": "PLACEHOLDER_CHATGLM3_DIR"}
DATA_KEYS = (
    "train_data_path_and_name_and_type", "valid_data_path_and_name_and_type",
    "train_shape_file", "valid_shape_file", "output_dir", "init_param",
)  # fmt: skip


def check_checkpoint(config: dict, state: dict[str, torch.Tensor]) -> dict:
    """Parameter counts of the model ``config`` describes; raises unless ``state`` is its trainable part."""
    args = argparse.Namespace(**config)
    model = SpeechLLMTask.build_model_on(args, meta=True)
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


def pack(model_dir: Path, model_file: str, out: Path) -> Path:
    config = yaml.safe_load((model_dir / "config.yaml").read_text(encoding="utf-8"))
    checkpoint = model_dir / model_file
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    counts = check_checkpoint(config, state)
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
    }  # fmt: skip
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(
        f"# Packed speech-LLM ({config['connector']}, {config['llm_finetune']})\n\n"
        f"Trained parts only ({meta['packed_parameters']:,} parameters) from `{meta['source']}`; "
        "the frozen Whisper encoder and ChatGLM3 weights are NOT included.\n\n"
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
    args = parser.parse_args(argv)
    print(pack(args.model_dir, args.model_file, args.out))


if __name__ == "__main__":
    main()
