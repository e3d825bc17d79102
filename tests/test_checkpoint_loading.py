"""Checkpoints that pass through ESPnet (training, the Conformer's decoding) load weights_only; a bad one is named.

One tiny SpeechLLMTask run (module fixture) writes a real ESPnet ``checkpoint.pth``; the tests
resume from it, break it, and hand training and decoding files holding pickled objects.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from espnet2.train.reporter import Reporter
from helpers_tiny import make_tokenizer, save_tiny_chatglm3, write_dataset

from espnet2_ext.bin.speechllm_train import main as train_main
from espnet2_ext.checkpoint_io import CheckpointError
from espnet2_ext.tasks.safe_loading import (
    ESPNET_CHECKPOINT_GLOBALS,
    FORCE_WEIGHTS_ONLY_ENV,
    SafeTrainer,
    load_init_param,
    weights_only_loads,
)

REPO = Path(__file__).resolve().parents[1]


def _touch(path: str) -> None:
    Path(path).touch()


class _Touches:
    """Unpickled without weights_only, it creates ``path``: the stand-in for code a pickle runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return _touch, (str(self.path),)


def _command(root: Path, exp: Path, max_epoch: int) -> list[str]:
    data = root / "data"
    return [
        "--config", str(REPO / "conf/tuning/tiny_encoder_decoder.yaml"),
        "--llm_conf", f"path={root / 'llm'}",
        "--tokenizer_file", str(root / "spm.model"),
        "--train_data_path_and_name_and_type", f"{data / 'feats.scp'},speech,kaldi_ark",
        "--train_data_path_and_name_and_type", f"{data / 'text'},text,text",
        "--valid_data_path_and_name_and_type", f"{data / 'feats.scp'},speech,kaldi_ark",
        "--valid_data_path_and_name_and_type", f"{data / 'text'},text,text",
        "--train_shape_file", str(data / "speech_shape"),
        "--valid_shape_file", str(data / "speech_shape"),
        "--output_dir", str(exp),
        "--max_epoch", str(max_epoch),
        "--ngpu", "0",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny data set, LLM and tokenizer under ROOT, and ROOT/exp after one epoch of training."""
    root = tmp_path_factory.mktemp("trained")
    tokenizer = make_tokenizer(root)
    write_dataset(root / "data")
    save_tiny_chatglm3(root / "llm", tokenizer.vocab_size)
    train_main(_command(root, root / "exp", max_epoch=1))
    return root


def _copy_exp(root: Path, name: str) -> Path:
    exp = root / name
    shutil.rmtree(exp, ignore_errors=True)
    shutil.copytree(root / "exp", exp, symlinks=True)
    return exp


def _resume(checkpoint: Path) -> None:
    """SafeTrainer.resume of ``checkpoint`` into a stand-in model (fails before the model is used)."""
    model = torch.nn.Linear(1, 1)
    SafeTrainer.resume(checkpoint, model, Reporter(), [], [], None)


@pytest.mark.parametrize("dropped", [None, *ESPNET_CHECKPOINT_GLOBALS], ids=lambda g: getattr(g, "__name__", "none"))
def test_an_espnet_checkpoint_needs_exactly_the_registered_globals(trained, monkeypatch, dropped):
    checkpoint = trained / "exp" / "checkpoint.pth"
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(checkpoint, weights_only=True)
    kept = [g for g in ESPNET_CHECKPOINT_GLOBALS if g is not dropped]
    monkeypatch.setattr("espnet2_ext.tasks.safe_loading.ESPNET_CHECKPOINT_GLOBALS", kept)
    with weights_only_loads():
        if dropped is None:
            states = torch.load(checkpoint)
            assert set(states) == {"model", "reporter", "optimizers", "schedulers", "scaler"}
        else:
            with pytest.raises(Exception, match="Weights only load failed"):
                torch.load(checkpoint)
    assert FORCE_WEIGHTS_ONLY_ENV not in os.environ


def test_weights_only_loads_nests_and_restores_what_was_allowed(trained):
    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([_Touches])
    try:
        with weights_only_loads():
            with weights_only_loads():
                pass
            torch.load(trained / "exp" / "checkpoint.pth")  # still allowed after the inner block
        assert set(torch.serialization.get_safe_globals()) == {*before, _Touches}
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)
    assert FORCE_WEIGHTS_ONLY_ENV not in os.environ


def test_resume_loads_every_checkpoint_weights_only(trained, monkeypatch, caplog):
    caplog.set_level("INFO")
    exp = _copy_exp(trained, "exp_resume")
    loads: list[tuple[str, bool]] = []
    real_load = torch.load

    def spy(f, *args, **kwargs):
        forced = os.environ.get(FORCE_WEIGHTS_ONLY_ENV) == "1"
        loads.append((Path(f).name, forced or kwargs.get("weights_only") is True))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    # keeping the 2 best epochs makes ESPnet average them at the end, loading both epoch files
    train_main(_command(trained, exp, max_epoch=2) + ["--resume", "true", "--keep_nbest_models", "2"])
    assert "The training was resumed" in caplog.text and (exp / "valid.acc.ave_2best.pth").is_file()
    assert {("checkpoint.pth", True), ("1epoch.pth", True), ("2epoch.pth", True)} <= set(loads)
    assert all(weights_only for _, weights_only in loads), loads
    assert FORCE_WEIGHTS_ONLY_ENV not in os.environ


def test_a_truncated_checkpoint_is_named_on_resume(trained):
    exp = _copy_exp(trained, "exp_truncated")
    checkpoint = exp / "checkpoint.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        train_main(_command(trained, exp, max_epoch=2) + ["--resume", "true"])
    assert str(err.value) == (
        f"{checkpoint}: cannot load checkpoint: truncated or corrupt (PytorchStreamReader failed reading zip "
        "archive: failed finding central directory); delete it or pass --resume false"
    )


def test_an_empty_checkpoint_is_named(tmp_path):
    checkpoint = tmp_path / "checkpoint.pth"
    checkpoint.write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"^{checkpoint}: cannot load checkpoint: empty or truncated"):
        _resume(checkpoint)


def test_a_checkpoint_holding_a_pickled_object_is_refused(trained, tmp_path):
    marker = tmp_path / "executed"
    with weights_only_loads():  # our own checkpoint, read with the globals ESPnet's need
        states = torch.load(trained / "exp" / "checkpoint.pth", weights_only=True)
    states["reporter"]["extra"] = _Touches(marker)
    checkpoint = tmp_path / "checkpoint.pth"
    torch.save(states, checkpoint)
    with pytest.raises(CheckpointError, match=r"holds pickled objects other than tensors .*_touch\), refused"):
        _resume(checkpoint)
    assert not marker.exists()


def test_init_param_holding_a_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "init.pth"
    torch.save({"weight": torch.zeros(1, 1), "bias": _Touches(marker)}, path)
    with pytest.raises(CheckpointError, match=rf"^{path}: cannot load checkpoint: it holds pickled objects"):
        load_init_param(f"{path}:::", torch.nn.Linear(1, 1), ignore_init_mismatch=False)
    assert not marker.exists()


def test_init_param_loads_a_state_dict_weights_only(tmp_path):
    source, target = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    torch.save(source.state_dict(), tmp_path / "init.pth")
    load_init_param(str(tmp_path / "init.pth"), target, ignore_init_mismatch=False)
    assert torch.equal(target.weight, source.weight)


def test_a_truncated_init_param_is_named_by_the_training_cli(trained, tmp_path):
    """Through ``python -m``: one error line naming the file, exit 2, no traceback."""
    init = tmp_path / "init.pth"
    init.write_bytes((trained / "exp" / "1epoch.pth").read_bytes()[:100])
    command = [sys.executable, "-m", "espnet2_ext.bin.speechllm_train",
               *_command(trained, tmp_path / "exp", max_epoch=1), "--init_param", str(init)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "ESPNET2_EXT_VERBOSE"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == (
        f"speechllm_train: error: {init}: cannot load checkpoint: truncated or corrupt (PytorchStreamReader failed "
        "reading zip archive: failed finding central directory); check --init_param"
    )


def test_the_conformer_baseline_loads_checkpoints_weights_only(tmp_path):
    """espnet2_ext.bin.asr_train/asr_inference: ESPnet's ASR training and decoding, weights_only."""
    from espnet2.tasks.asr import ASRTask

    from espnet2_ext.bin import asr_inference, asr_train

    (tmp_path / "tokens.txt").write_text("<blank>\n<unk>\n北\n京\n<sos/eos>\n", encoding="utf-8")
    init = tmp_path / "init.pth"
    init.write_bytes(b"PK\x03\x04 truncated")
    exp = tmp_path / "exp"
    data = [f"--{split}_data_path_and_name_and_type={tmp_path / 'wav.scp'},speech,sound" for split in ("train", "valid")]
    shapes = [f"--{split}_shape_file={tmp_path / 'speech_shape'}" for split in ("train", "valid")]
    with pytest.raises(CheckpointError, match=rf"^{init}: cannot load checkpoint: truncated or corrupt"):
        asr_train.main(["--config", str(REPO / "egs/mini_aishell_ner/llm1/conf/train_conformer.yaml"),
                        "--token_type", "char", "--token_list", str(tmp_path / "tokens.txt"), "--ngpu", "0",
                        "--output_dir", str(exp), *data, *shapes, "--init_param", str(init)])  # fmt: skip
    # The config ESPnet wrote before loading --init_param serves decoding.
    marker = tmp_path / "executed"
    torch.save({"encoder.x": _Touches(marker)}, tmp_path / "model.pth")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        asr_inference.main(["--asr_train_config", str(exp / "config.yaml"), "--asr_model_file", str(tmp_path / "model.pth"),
                            "--data_path_and_name_and_type", f"{tmp_path / 'wav.scp'},speech,sound",
                            "--output_dir", str(tmp_path / "decode"), "--ngpu", "0"])  # fmt: skip
    assert not marker.exists()
    # A real model state decodes.
    model, _ = ASRTask.build_model_from_file(exp / "config.yaml", None, "cpu")
    torch.save(model.state_dict(), tmp_path / "model.pth")
    sf.write(tmp_path / "a.wav", np.random.default_rng(0).uniform(-0.1, 0.1, 16000).astype(np.float32), 16000)
    (tmp_path / "wav.scp").write_text(f"utt1 {tmp_path / 'a.wav'}\n", encoding="utf-8")
    asr_inference.main(["--asr_train_config", str(exp / "config.yaml"), "--asr_model_file", str(tmp_path / "model.pth"),
                        "--data_path_and_name_and_type", f"{tmp_path / 'wav.scp'},speech,sound",
                        "--beam_size", "1", "--maxlenratio", "0.3", "--output_dir", str(tmp_path / "decode"),
                        "--ngpu", "0"])  # fmt: skip
    assert (tmp_path / "decode" / "1best_recog" / "text").read_text(encoding="utf-8").startswith("utt1")
