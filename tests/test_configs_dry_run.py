"""CI dry run: every training YAML in the repository builds its model (meta device, no weights)."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from espnet2_ext.bin.count_params import count

REPO = Path(__file__).resolve().parents[1]
SPEECHLLM_CONFIGS = sorted(
    p for p in [*REPO.glob("conf/tuning/*.yaml"), *REPO.glob("egs/*/llm1/conf/train_*.yaml")]
    if not p.is_symlink() and "connector" in p.read_text(encoding="utf-8")
)
CONFORMER_CONFIGS = sorted(
    p for p in [*REPO.glob("conf/tuning/train_conformer*.yaml"), *REPO.glob("egs/*/llm1/conf/train_conformer*.yaml")]
    if not p.is_symlink()
)


def test_every_config_is_covered():
    assert len(SPEECHLLM_CONFIGS) >= 12 and len(CONFORMER_CONFIGS) >= 2


@pytest.mark.parametrize("config", SPEECHLLM_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_speechllm_config_builds(config):
    result = count(["--config", str(config),
                    "--llm_config", str(REPO / "conf/model_configs/chatglm3-6b"),
                    "--whisper_config", str(REPO / "conf/model_configs/whisper-large-v2")])
    assert result["connector"] > 0 and result["trainable"] > 0
    assert result["llm_base"] == 6_243_584_000


@pytest.mark.parametrize("config", CONFORMER_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_conformer_config_builds(config):
    from espnet2.tasks.asr import ASRTask

    args = ASRTask.get_parser().parse_args(["--config", str(config), "--token_list", "x", "--output_dir", "x"])
    args.token_list = ["<blank>", "<unk>", "[", "北", "<sos/eos>"]
    args.input_size = None
    with torch.device("meta"):
        model = ASRTask.build_model(argparse.Namespace(**vars(args)))
    assert sum(p.numel() for p in model.parameters()) > 1e5
