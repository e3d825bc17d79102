"""SpeechLLMTask.main: one epoch on a tiny kaldi_ark set writes checkpoints; --resume continues to epoch 2."""

from pathlib import Path

import torch
from helpers_tiny import make_tokenizer, save_tiny_chatglm3, write_dataset

from espnet2_ext.bin.speechllm_train import main

REPO = Path(__file__).resolve().parents[1]


def _command(tmp: Path, data: dict, llm_dir: Path, max_epoch: int) -> list[str]:
    return [
        "--config", str(REPO / "conf/tuning/tiny_encoder_decoder.yaml"),
        "--llm_conf", f"path={llm_dir}",
        "--tokenizer_file", str(tmp / "spm.model"),
        "--preprocessor_conf", f"history_file={data['history']}",
        "--preprocessor_conf", "tasks={long_asr: 0.3, cot_ner: 0.7}",
        "--preprocessor_conf", "max_history=1",
        "--preprocessor_conf", "eval_task=cot_ner",
        "--preprocessor_conf", "eval_history=1",
        "--train_data_path_and_name_and_type", f"{data['feats.scp']},speech,kaldi_ark",
        "--train_data_path_and_name_and_type", f"{data['text']},text,text",
        "--valid_data_path_and_name_and_type", f"{data['feats.scp']},speech,kaldi_ark",
        "--valid_data_path_and_name_and_type", f"{data['text']},text,text",
        "--train_shape_file", str(data["speech_shape"]),
        "--valid_shape_file", str(data["speech_shape"]),
        "--output_dir", str(tmp / "exp"),
        "--max_epoch", str(max_epoch),
        "--ngpu", "0",
    ]


def test_train_one_epoch_then_resume(tmp_path, caplog):
    caplog.set_level("INFO")
    tokenizer = make_tokenizer(tmp_path)
    data = write_dataset(tmp_path / "data")
    llm_dir = save_tiny_chatglm3(tmp_path / "llm", tokenizer.vocab_size)
    exp = tmp_path / "exp"

    main(_command(tmp_path, data, llm_dir, max_epoch=1))
    first = torch.load(exp / "1epoch.pth", weights_only=True)
    assert any(k.startswith("connector.blocks.0.") for k in first)
    assert not any(k.startswith("encoder.") for k in first)
    assert (exp / "checkpoint.pth").is_file() and (exp / "valid.acc.best.pth").exists()

    assert "Parameters per component" in caplog.text
    caplog.clear()
    main(_command(tmp_path, data, llm_dir, max_epoch=2) + ["--resume", "true"])
    assert "The training was resumed" in caplog.text and "1epoch results" not in caplog.text
    assert "2epoch results" in caplog.text and (exp / "2epoch.pth").is_file()
    second = torch.load(exp / "2epoch.pth", weights_only=True)
    assert set(second) == set(first)
    assert not torch.equal(second["connector.proj.weight"], first["connector.proj.weight"])


def test_train_on_log_mel_with_the_frozen_whisper_encoder(tmp_path):
    """`--encoder whisper`: the frozen encoder runs inside training on log-mel input; it stays out of checkpoints."""
    import kaldiio
    import numpy as np
    from helpers_tiny import TEXTS

    from espnet2_ext.upstream_formats import save_whisper_hf, tiny_whisper_config

    tokenizer = make_tokenizer(tmp_path)
    data = write_dataset(tmp_path / "data")
    rng = np.random.default_rng(0)
    mels = {uid: rng.standard_normal((20 + 4 * i, 80)).astype(np.float32) for i, uid in enumerate(TEXTS)}
    kaldiio.save_ark(str(tmp_path / "mel.ark"), mels, scp=str(tmp_path / "mel.scp"))
    (tmp_path / "mel_shape").write_text("".join(f"{u} {m.shape[0]},80\n" for u, m in mels.items()))
    save_whisper_hf(tiny_whisper_config(d_model=8), tmp_path / "whisper")
    llm_dir = save_tiny_chatglm3(tmp_path / "llm", tokenizer.vocab_size)
    data["feats.scp"], data["speech_shape"] = tmp_path / "mel.scp", tmp_path / "mel_shape"
    main(_command(tmp_path, data, llm_dir, max_epoch=1)
         + ["--encoder", "whisper", "--encoder_conf", f"path={tmp_path / 'whisper'}", "--encoder_conf", "pad_to_30s=false"])
    state = torch.load(tmp_path / "exp" / "1epoch.pth", weights_only=True)
    assert state and not any(k.startswith("encoder.") for k in state)
    assert state["connector.proj.weight"].shape[1] == 2 * 8  # 2 stacked frames of the 8-wide encoder


def test_ddp_with_torchrun_and_gloo(tmp_path):
    """Two CPU processes through torchrun (gloo), as on a cluster without ESPnet's own launcher."""
    import os
    import subprocess
    import sys

    tokenizer = make_tokenizer(tmp_path)
    data = write_dataset(tmp_path / "data")
    llm_dir = save_tiny_chatglm3(tmp_path / "llm", tokenizer.vocab_size)
    command = _command(tmp_path, data, llm_dir, max_epoch=1)
    command += ["--dist_backend", "gloo", "--multiprocessing_distributed", "false", "--batch_size", "2"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    proc = subprocess.run([*torchrun, "-m", "espnet2_ext.bin.speechllm_train", *command], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[vm:0/2]" in proc.stderr or ":0/2]" in proc.stderr  # ESPnet tags log lines with rank/world size
    assert (tmp_path / "exp" / "1epoch.pth").is_file()
