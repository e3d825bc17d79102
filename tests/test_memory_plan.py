"""plan_memory: its activation model against measured CPU peaks, and the full-size configs on an 80 GB GPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from espnet2_ext.bin import plan_memory

REPO = Path(__file__).resolve().parents[1]
FULL_SIZE = sorted(REPO.glob("conf/tuning/train_*_phase*.yaml"))
MODEL_CONFIGS = ["--llm_config", str(REPO / "conf/model_configs/chatglm3-6b"),
                 "--whisper_config", str(REPO / "conf/model_configs/whisper-large-v2")]


def _bench():
    spec = importlib.util.spec_from_file_location("plan_vs_measured", REPO / "bench" / "plan_vs_measured.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("arch", ["adapter", "cross_attention"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_model_bounds_the_measured_peak(arch, checkpointing):
    """Never below the measured peak, and at most 1.6x above it (the head's transient is bounded generously)."""
    bench = _bench()
    row = bench.compare(arch, torch.bfloat16, checkpointing, bench.SHAPES["small"])
    assert 0.98 <= row["ratio"] <= 1.6, row


@pytest.mark.parametrize("config", FULL_SIZE, ids=lambda p: p.name)
def test_full_size_configs_fit_an_80_gb_gpu(config, capsys):
    plan_memory.main(["--config", str(config), *MODEL_CONFIGS, "--gpu_mem", "80", "--check"])
    result = json.loads(capsys.readouterr().out)
    assert result["fits"] and result["activation_checkpointing"]
    assert result["peak_gib"] < 80 and result["largest_fitting_batch_bins"] > result["batch_bins"]
    assert result["activations_gib"]["with_checkpointing"] < result["activations_gib"]["without_checkpointing"]
    assert 11.5 < result["weights_gib"] < 14  # ChatGLM3-6B in bf16, connector and LoRA in fp32


def test_a_config_that_cannot_fit_names_the_knobs():
    config = REPO / "conf/tuning/train_encoder_decoder_phase3.yaml"
    result = plan_memory.run(["--config", str(config), *MODEL_CONFIGS, "--gpu_mem", "24"])
    assert not result["fits"] and result["largest_fitting_batch_bins"] < result["batch_bins"]
    with pytest.raises(plan_memory.DoesNotFit, match="lower batch_bins to <= .*activation_checkpointing"):
        plan_memory.run(["--config", str(config), *MODEL_CONFIGS, "--gpu_mem", "24", "--check",
                         "--activation_checkpointing", "false"])
