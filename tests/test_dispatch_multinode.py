"""`--num_nodes M`: one Slurm submission runs the command once per node (srun), torchrun joins them in one
process group (utils/ddp_launch.py); a failing rank fails the call and names its log. The test cluster has
one node, so its config maps --num_nodes to Slurm tasks on that node (a real cluster: --nodes, one task each)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers_dispatch import body, dispatch
from helpers_tiny import make_tokenizer, save_tiny_chatglm3, write_dataset
from slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (pytest fixture)

REPO = Path(__file__).resolve().parents[1]
SINGLE_NODE_RULES = "option num_nodes=* --ntasks=$0\noption num_nodes=1\n"


def _slurm(cluster: SlurmCluster, tmp: Path, args: str) -> subprocess.CompletedProcess:
    conf = tmp / "slurm.conf"
    text = (REPO / "conf/slurm.conf").read_text()
    conf.write_text("".join(l + "\n" for l in text.splitlines() if not l.startswith("option num_nodes")) + SINGLE_NODE_RULES)
    env = {**cluster.env, "cmd_backend": "slurm", "slurm_conf": str(conf), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", "-c", f'set -eu; . "{REPO}/cmd.sh"; $train_cmd {args}'], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=600)


def test_two_node_training_runs_as_one_process_group(slurm_cluster: SlurmCluster, tmp_path):  # noqa: F811
    tokenizer = make_tokenizer(tmp_path)
    data = write_dataset(tmp_path / "data")
    llm = save_tiny_chatglm3(tmp_path / "llm", tokenizer.vocab_size)
    train = [
        "--config", REPO / "conf/tuning/tiny_decoder_only.yaml", "--llm_conf", f"path={llm}",
        "--tokenizer_file", tmp_path / "spm.model",
        "--train_data_path_and_name_and_type", f"{data['feats.scp']},speech,kaldi_ark",
        "--train_data_path_and_name_and_type", f"{data['text']},text,text",
        "--valid_data_path_and_name_and_type", f"{data['feats.scp']},speech,kaldi_ark",
        "--valid_data_path_and_name_and_type", f"{data['text']},text,text",
        "--train_shape_file", data["speech_shape"], "--valid_shape_file", data["speech_shape"],
        "--output_dir", tmp_path / "exp", "--max_epoch", "1", "--ngpu", "0", "--batch_type", "token_budget",
        "--batch_bins", "100", "--dist_backend", "gloo", "--multiprocessing_distributed", "false",
    ]
    command = " ".join(["--num_nodes 2 exp/train.log", sys.executable, str(REPO / "utils/ddp_launch.py"),
                        "--nproc_per_node 1 -m espnet2_ext.bin.speechllm_train", *map(str, train)])
    r = _slurm(slurm_cluster, tmp_path, command)
    log = (tmp_path / "exp/train.log").read_text()
    assert r.returncode == 0, r.stderr + log[-3000:]
    assert "--nnodes=2 --node_rank=0" in log and "--nnodes=2 --node_rank=1" in log
    assert ":0/2]" in log  # ESPnet's rank 0 of a world of 2
    assert log.splitlines()[-1].startswith("# Ended (code 0) at ")
    assert (tmp_path / "exp/1epoch.pth").is_file()


def test_a_failing_rank_fails_the_call_and_names_its_log(slurm_cluster: SlurmCluster, tmp_path):  # noqa: F811
    (tmp_path / "rank.py").write_text("import os, sys\nprint('rank', os.environ['RANK'])\n"
                                      "sys.exit(3 if os.environ['RANK'] == '1' else 0)\n")
    r = _slurm(slurm_cluster, tmp_path, f"--num_nodes 2 exp/fail.log {sys.executable} "
               f"{REPO / 'utils/ddp_launch.py'} --nproc_per_node 1 rank.py")
    assert r.returncode == 1
    assert "1 / 1 job failed" in r.stderr and "exp/fail.log (code" in r.stderr
    assert {"rank 0", "rank 1"} <= set(body(tmp_path / "exp/fail.log"))


def test_the_local_backend_refuses_several_nodes(tmp_path):
    r = dispatch("local", "--num_nodes 2 log.txt true", tmp_path, dict(os.environ))
    assert r.returncode == 2 and "--num_nodes 2: the local backend runs on this machine only" in r.stderr
    assert dispatch("local", "--num_nodes 1 log.txt true", tmp_path, dict(os.environ)).returncode == 0
