"""Token-budget batches through ESPnet's Trainer: 2 DDP processes (torchrun, gloo) = 1 process accumulating 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers_tiny import make_tokenizer, save_tiny_chatglm3, write_dataset

from espnet2_ext.bin.speechllm_train import main
from espnet2_ext.samplers.token_budget import budget_batches
from espnet2_ext.tasks.speechllm import SpeechLLMTask

REPO = Path(__file__).resolve().parents[1]


def _command(tmp: Path, data: dict, llm_dir: Path, out: Path) -> list[str]:
    return [
        "--config", str(REPO / "conf/tuning/tiny_decoder_only.yaml"),
        "--llm_conf", f"path={llm_dir}", "--tokenizer_file", str(tmp / "spm.model"),
        "--preprocessor_conf", f"history_file={data['history']}",
        "--preprocessor_conf", "tasks={short_asr: 0.4, long_asr: 0.3, cot_ner: 0.3}",
        "--preprocessor_conf", "max_history=1",
        "--train_data_path_and_name_and_type", f"{data['feats.scp']},speech,kaldi_ark",
        "--train_data_path_and_name_and_type", f"{data['text']},text,text",
        "--valid_data_path_and_name_and_type", f"{data['feats.scp']},speech,kaldi_ark",
        "--valid_data_path_and_name_and_type", f"{data['text']},text,text",
        "--train_shape_file", str(data["speech_shape"]), "--valid_shape_file", str(data["speech_shape"]),
        "--output_dir", str(out), "--max_epoch", "1", "--ngpu", "0", "--batch_type", "token_budget",
    ]


def test_two_ddp_processes_match_one_process_with_the_same_global_batch(tmp_path, caplog):
    caplog.set_level("INFO")
    tokenizer = make_tokenizer(tmp_path)
    data = write_dataset(tmp_path / "data")
    llm_dir = save_tiny_chatglm3(tmp_path / "llm", tokenizer.vocab_size)
    command = _command(tmp_path, data, llm_dir, tmp_path / "one")
    # A budget that makes two batches of two in epoch 1: equal weights, so both runs average the same gradients.
    args = SpeechLLMTask.get_parser().parse_args(command)
    factory = SpeechLLMTask.build_iter_factory(args, _NotDistributed(), "train")
    costs = factory.coster.costs(1)
    budget = 2 * max(costs.values())
    assert [len(b) for b in budget_batches(costs, budget)] == [2, 2]

    main([*command, "--batch_bins", str(budget), "--accum_grad", "2"])
    assert "2 batches of <= " in caplog.text and "4.0 per update (x 1 ranks x accum_grad 2)" in caplog.text

    ddp = [*_command(tmp_path, data, llm_dir, tmp_path / "two"), "--batch_bins", str(budget), "--accum_grad", "1",
           "--dist_backend", "gloo", "--multiprocessing_distributed", "false"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    proc = subprocess.run([*torchrun, "-m", "espnet2_ext.bin.speechllm_train", *ddp], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]

    one = torch.load(tmp_path / "one" / "1epoch.pth", weights_only=True)
    two = torch.load(tmp_path / "two" / "1epoch.pth", weights_only=True)
    initial = SpeechLLMTask.build_model(args).state_dict()
    assert set(one) == set(two)
    assert any(not torch.equal(one[k], initial[k]) for k in one)  # training moved the weights
    for key in one:
        assert torch.allclose(one[key], two[key], rtol=1e-4, atol=1e-6), key


class _NotDistributed:
    distributed = False
