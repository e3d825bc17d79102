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
    assert (exp / "2epoch.pth").is_file()
    checkpoint = torch.load(exp / "checkpoint.pth", weights_only=False)
    assert checkpoint["reporter"]["epoch"] == 2
    second = torch.load(exp / "2epoch.pth", weights_only=True)
    assert set(second) == set(first)
    assert not torch.equal(second["connector.proj.weight"], first["connector.proj.weight"])
