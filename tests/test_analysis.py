"""analyze_speechllm: gate curves of encoder-decoder phases, speech-attention curves of a decoder-only model."""

import json

import pytest
import torch
from helpers_tiny import train_tiny_experiment

from espnet2_ext.bin.analyze_speechllm import analysis_keys
from espnet2_ext.bin.analyze_speechllm import main as analyze
from espnet2_ext.speechllm.analysis import gate_values


def test_gate_values_are_tanh_of_each_layer_gate():
    state = {"connector.blocks.1.gate": torch.tensor(0.5), "connector.blocks.0.gate": torch.tensor(-1.0), "x": torch.ones(2)}
    assert gate_values(state) == pytest.approx([torch.tanh(torch.tensor(-1.0)).item(), torch.tanh(torch.tensor(0.5)).item()])
    with pytest.raises(ValueError, match="no cross-attention gates"):
        gate_values({"connector.gamma": torch.zeros(3)})


def test_analysis_keys_take_the_earliest_utterances_with_enough_history():
    history = {"a1": [], "a2": ["a1"], "a3": ["a1", "a2"], "b1": [], "b2": ["b1"]}
    assert analysis_keys(history, list(history), 1, 2) == (["a2", "b2"], ["a1", "a2", "b1", "b2"])
    assert analysis_keys(history, list(history), 2, 5) == (["a3"], ["a1", "a2", "a3"])


def test_writes_gate_and_attention_plots(tmp_path):
    decoder_only = train_tiny_experiment(tmp_path / "do")
    encoder_decoder = train_tiny_experiment(tmp_path / "ed", config="tiny_encoder_decoder.yaml")
    out = tmp_path / "analysis"
    (encoder_decoder["exp"] / "phase_b").symlink_to(encoder_decoder["exp"])
    analyze(["--model_dir", str(encoder_decoder["exp"]), str(encoder_decoder["exp"] / "phase_b"), "--out", str(out),
             "--llm_conf", f"path={encoder_decoder['llm']}"])
    gates = json.loads((out / "gates.json").read_text())
    assert list(gates) == ["exp", "phase_b"] and len(gates["exp"]) == 2 and gates["exp"] == gates["phase_b"]
    assert any(abs(g) > 0 for g in gates["exp"]) and (out / "gates.png").stat().st_size > 0

    data = decoder_only["data"]
    analyze(["--model_dir", str(decoder_only["exp"]), "--out", str(out), "--llm_conf", f"path={decoder_only['llm']}",
             "--data", str(data["feats.scp"]), "--history_file", str(data["history"]), "--histories", "0", "1",
             "--num_utts", "2"])
    result = json.loads((out / "attention.json").read_text())
    assert list(result["curves"]) == ["asr, 0 history", "asr, 1 history", "ner, 0 history", "ner, 1 history"]
    for values in result["curves"].values():
        assert len(values) == 2 and all(0 < v < 1 for v in values)
    assert result["curves"]["asr, 0 history"] != result["curves"]["asr, 1 history"]
    assert (out / "attention.png").read_bytes()[:4] == b"\x89PNG"
