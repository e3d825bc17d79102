"""bench/gpu_recipe.sh --tiny: the GPU benchmark end to end on the CPU (upstream-format checkpoints, stages 1 and 3,
four training runs through the recipe's entry point, the report), and what its JSON holds for every run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNS = ("decoder_only_phase1", "decoder_only_phase3", "encoder_decoder_phase1", "encoder_decoder_phase3")


@pytest.mark.slow
def test_gpu_recipe_tiny_runs_all_four_trainings_and_reports_them(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run(
        ["bash", str(REPO / "bench/gpu_recipe.sh"), "--tiny", "--out", str(out), "--work", str(work)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_train_cpu_tiny.json").read_text(encoding="utf-8"))

    assert result["device"] == "cpu" and result["tiny"] is True and result["failed_runs"] == []
    assert result["environment"]["espnet"] and result["mfu_formula"]
    assert set(result["runs"]) == set(RUNS)
    for name, run in result["runs"].items():
        assert run["config"] == f"conf/tuning/train_{name}.yaml"  # the shipped full-size configs
        changed = {option.split()[0] for option in run["options_besides_paths"]}
        assert changed <= {"--ngpu", "--max_epoch", "--log_interval", "--frozen_dtype", "--encoder_conf",
                           "--lora_conf", "--connector_conf", "--num_workers"}, changed  # fmt: skip
        assert run["iterations"] == run["iterations_logged_by_espnet"] >= 4
        assert run["updates"] == run["iterations"] // run["accum_grad"]
        assert 0 < run["tokens"]["real"] <= run["tokens"]["computed"]
        assert run["tokens"]["per_iteration"] <= run["batch_bins"]
        assert run["step_time_s"] > 0 and run["iteration_time_s"] > 0 and run["tokens_per_s"] > 0
        assert run["model_tflops_per_s"] > 0 and run["mfu"] is None  # no GPU peak to divide by
        assert all(loss > 0 for loss in run["train_loss_per_epoch"] + run["valid_loss_per_epoch"])
        assert run["memory"]["planned_peak_gib"] > 0 and run["memory"]["max_allocated_gib"] is None
        assert run["plan_memory"]["fits"] is True
    cross = result["runs"]["encoder_decoder_phase1"]["parameters"]["connector"]
    assert cross > result["runs"]["decoder_only_phase1"]["parameters"]["connector"]

    llm = work / "chatglm3-6b"  # ChatGLM3 as published: config, sharded weights with an index, tokenizer
    index = json.loads((llm / "pytorch_model.bin.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert all(name.startswith("transformer.") for name in index["weight_map"])
    assert json.loads((llm / "config.json").read_text())["model_type"] == "chatglm"
    assert (llm / "tokenizer.model").is_file()
    assert (work / "whisper-large-v2/config.json").is_file() and (work / "whisper-large-v2/model.safetensors").is_file()
    dump = json.loads((work / "dump/train/feats_conf.json").read_text())
    assert dump["input_type"] == "encoder_output" and dump["pad_to_30s"] is True and dump["dump_dtype"] == "float16"
    assert not list((work / "exp").rglob("*.pth"))  # checkpoints are removed after each run
