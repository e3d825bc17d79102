"""Recipes end to end: the full recipe's stages 1-3 on a fake AISHELL-1 tree, and the mini recipe (CI size)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import kaldiio
import pytest

from espnet2_ext.upstream_formats import save_whisper_hf, tiny_whisper_config

REPO = Path(__file__).resolve().parents[1]
FULL = REPO / "egs/aishell_ner/llm1"
MINI = REPO / "egs/mini_aishell_ner/llm1"


def _run(cmd: list[str], cwd: Path, log: Path, timeout: int) -> str:
    env = {**os.environ, "cmd_backend": "local"}
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False)
    text = log.read_text(encoding="utf-8")
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-4000:]}"
    return text


@pytest.fixture(scope="module")
def fake_aishell(tmp_path_factory) -> Path:
    """A small corpus in AISHELL-1's layout, made by the mini recipe's generator."""
    out = tmp_path_factory.mktemp("corpus")
    _run([sys.executable, str(MINI / "local/make_corpus.py"), "--out", str(out), "--num_train", "16", "--num_dev", "6",
          "--num_test", "6", "--num_train_spk", "2", "--num_dev_spk", "1", "--num_test_spk", "1", "--nj", "2"],
         REPO, out / "make_corpus.log", 300)
    return out


def test_full_recipe_stages_1_to_3(fake_aishell, tmp_path):
    whisper = tmp_path / "whisper"
    save_whisper_hf(tiny_whisper_config(d_model=16), whisper)
    exp = tmp_path / "exp"
    text = _run(["./run.sh", "--stage", "1", "--stop_stage", "3", "--ngpu", "0", "--nj", "2",
                 "--aishell_dir", str(fake_aishell / "data_aishell"), "--ner_dir", str(fake_aishell / "aishell_ner"),
                 "--whisper", str(whisper), "--llm", str(tmp_path / "unused"), "--pad_to_30s", "false",
                 "--datadir", str(exp / "data"), "--dumpdir", str(exp / "dump"), "--expdir", str(exp)],
                FULL, tmp_path / "run.log", 600)
    assert "Successfully finished" in text
    for split, n in (("train", 16), ("dev", 6), ("test", 6)):
        data = exp / "data" / split
        for name in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2dur", "history"):
            assert (data / name).is_file(), f"{data / name} missing"
        ids = [line.split()[0] for line in (data / "text").read_text(encoding="utf-8").splitlines()]
        assert len(ids) == n and ids == sorted(ids)
        assert not any(" " in line.split(maxsplit=1)[1] for line in (data / "text").read_text(encoding="utf-8").splitlines())
        history = [line.split() for line in (data / "history").read_text(encoding="utf-8").splitlines()]
        assert all(all(prev < h[0] and prev[:11] == h[0][:11] for prev in h[1:]) for h in history)
        # the full recipe's default is the paper's input path: log-mel dumps (Whisper runs in training)
        feats = dict(kaldiio.load_scp(str(exp / "dump/mel" / split / "feats.scp")))
        assert sorted(feats) == ids
        shapes = dict(line.split() for line in (exp / "dump/mel" / split / "feats_shape").read_text().splitlines())
        for utt in ids:
            assert feats[utt].shape[1] == 80 and shapes[utt] == f"{feats[utt].shape[0]},80"
    # Idempotent: a rerun with the same options skips every stage.
    rerun = _run(["./run.sh", "--stage", "1", "--stop_stage", "3", "--ngpu", "0", "--nj", "2",
                  f"--aishell_dir={fake_aishell / 'data_aishell'}", "--ner_dir", str(fake_aishell / "aishell_ner"),
                  "--whisper", str(whisper), "--llm", str(tmp_path / "unused"), "--pad_to_30s", "false",
                  "--datadir", str(exp / "data"), "--dumpdir", str(exp / "dump"), "--expdir", str(exp)],
                 FULL, tmp_path / "rerun.log", 300)
    assert len(re.findall(r"is up to date, skipping", rerun)) == 7 and "dumping" not in rerun


@pytest.mark.slow
def test_mini_recipe_fast(tmp_path):
    """The built-in default at CI size: every system trained, decoded and scored into one RESULTS.md."""
    exp = tmp_path / "exp"
    text = _run(["./run.sh", "--fast", "true", "--corpus", str(tmp_path / "corpus"), "--expdir", str(exp)],
                MINI, tmp_path / "mini.log", 3000)
    results = (exp / "RESULTS.md").read_text(encoding="utf-8")
    assert results in text.replace("\r", "") or "### ASR: CER (%)" in text
    for system in ("decoder_only", "encoder_decoder", "conformer"):
        assert re.search(rf"^\| {system} phase\d \w+ his=\d \| [\d.]+ \|", results, re.M), f"no {system} row:\n{results}"
    for arch in ("decoder_only", "encoder_decoder"):
        assert (exp / arch / "packed" / "model.pth").is_file()
        assert list((exp / arch / "analysis").glob("*.png"))
    # The paper's input path on the same corpus: log-mel dumps, Whisper in every training step, its own rows.
    text = _run(["./run.sh", "--fast", "true", "--corpus", str(tmp_path / "corpus"), "--expdir", str(exp),
                 "--input_type", "mel", "--systems", "decoder_only", "--stage", "1"], MINI, tmp_path / "mel.log", 3000)
    results = (exp / "RESULTS.md").read_text(encoding="utf-8")
    assert re.search(r"^\| decoder_only_mel phase3 ner his=1 \| [\d.]+ \|", results, re.M), results
    assert re.search(r"^\| decoder_only phase3 ner his=1 \| [\d.]+ \|", results, re.M), "cached rows kept"
    assert (exp / "dump/mel/test/feats.scp").is_file() and (exp / "decoder_only_mel/packed/model.pth").is_file()
    assert "encoder: whisper" in (exp / "decoder_only_mel/phase3/config.yaml").read_text(encoding="utf-8")
