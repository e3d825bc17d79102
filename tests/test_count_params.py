"""count_params on the full-size configs (meta device): the paper's connector sizes."""

from pathlib import Path

import pytest

from espnet2_ext.bin.count_params import count

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["--llm_config", str(REPO / "conf/model_configs/chatglm3-6b"),
           "--whisper_config", str(REPO / "conf/model_configs/whisper-large-v2")]


@pytest.mark.parametrize("arch,connector", [("decoder_only", 43.0e6), ("encoder_decoder", 437e6)])
@pytest.mark.parametrize("phase", [1, 3])
def test_full_size_counts(arch, connector, phase):
    result = count(["--config", str(REPO / f"conf/tuning/train_{arch}_phase{phase}.yaml"), *CONFIGS])
    assert abs(result["connector"] / connector - 1) < 0.01
    assert result["llm_base"] == 6_243_584_000
    assert 600e6 < result["whisper"] < 650e6
    assert 14.5e6 < result["lora"] < 15.6e6  # the paper's 15M: rank 32 on the attention projections
    assert result["lora_by_projections"] == {"attention": result["lora"], "all": 66_633_728}
    assert result["trainable"] == result["connector"] + result["lora"]
