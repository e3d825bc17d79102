"""The stage engine (egs/TEMPLATE/llm1/llm.sh): a stage is redone exactly when what it was made from
changed, a half-trained phase is never resumed under other settings, recipes pass every option
through, and --help works before tools/venv exists.

Each test builds a recipe directory like egs/aishell_ner/llm1 (its run.sh and local/data.sh, the mini
recipe's tiny configs) under a path holding spaces, `(`, `'`, `$` and `;`. Data preparation and
normalisation are the real ones, on a tiny AISHELL-shaped corpus written here; training and decoding
go through tests/helpers_fake_dispatch.py, which fakes them in milliseconds and records each call.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "egs/TEMPLATE/llm1/llm.sh"
FULL = REPO / "egs/aishell_ner/llm1"
MINI_CONF = REPO / "egs/mini_aishell_ner/llm1/conf"
FAKE_DISPATCH = REPO / "tests/helpers_fake_dispatch.py"
WEIRD = "we ird (1)'$x;touch pwned"
# (AISHELL-NER text, AISHELL-1 transcript) pairs of the tiny corpus.
SENTENCES = [("[张三]在(北京)工作", "张三 在 北京 工作"), ("<中国银行>宣布降息", "中国银行 宣布 降息"),
             ("今天天气很好", "今天 天气 很好")]
SPEAKERS = {"train": ["S0001", "S0002"], "dev": ["S0003"], "test": ["S0004"]}


def write_corpus(root: Path) -> None:
    """Two 0.5-s utterances per speaker in AISHELL-1's layout, with AISHELL-NER transcripts."""
    aishell, ner = root / "data_aishell", root / "aishell_ner"
    (aishell / "transcript").mkdir(parents=True)
    ner.mkdir(parents=True)
    transcript = []
    for split, speakers in SPEAKERS.items():
        lines = []
        for spk in speakers:
            for n in (1, 2):
                utt = f"BAC009{spk}W{n:04d}"
                wav = aishell / "wav" / split / spk / f"{utt}.wav"
                wav.parent.mkdir(parents=True, exist_ok=True)
                with wave.open(str(wav), "wb") as f:
                    f.setnchannels(1)
                    f.setsampwidth(2)
                    f.setframerate(16000)
                    f.writeframes(os.urandom(16000))
                marked, plain = SENTENCES[(n + int(spk[1:])) % len(SENTENCES)]
                lines.append(f"{utt} {marked}\n")
                transcript.append(f"{utt} {plain}\n")
        (ner / f"aishell_ner_transcript.{split}.txt").write_text("".join(lines), encoding="utf-8")
    (aishell / "transcript/aishell_transcript_v0.8.txt").write_text("".join(transcript), encoding="utf-8")


def write_data_dirs(datadir: Path) -> None:
    """Normalised data dirs as stages 1-2 leave them, for tests that start at stage 5."""
    for split, speakers in SPEAKERS.items():
        utts = [(f"BAC009{spk}W{n:04d}", spk) for spk in speakers for n in (1, 2)]
        d = datadir / split
        d.mkdir(parents=True)
        (d / "text").write_text("".join(f"{u} 今天天气很好\n" for u, _ in utts), encoding="utf-8")
        (d / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s in utts))
        (d / "spk2utt").write_text("".join(f"{s} {' '.join(u for u, t in utts if t == s)}\n" for s in speakers))
        (d / "history").write_text("".join(f"{u}\n" for u, _ in utts))


@dataclass
class Recipe:
    """A recipe directory and the options every run gets; runs fail the test when they misbehave."""

    dir: Path
    root: Path
    calls_file: Path
    common: list[str] = field(default_factory=list)

    def run(self, *args: str, ok: bool = True, env: dict[str, str] | None = None, script: str = "./run.sh") -> str:
        proc = subprocess.run([script, *self.common, *args], cwd=self.dir, capture_output=True, text=True,
                              env={**os.environ, "FAKE_CALLS": str(self.calls_file), **(env or {})}, timeout=300)
        out = proc.stdout + proc.stderr
        assert (proc.returncode == 0) == ok, f"{script} {' '.join(args)} exited {proc.returncode}:\n{out[-4000:]}"
        assert not list(self.root.parent.rglob("pwned")), "a path was run as shell code"
        return out

    def take_calls(self) -> list[dict]:
        """The faked training and decoding calls since the last take."""
        if not self.calls_file.exists():
            return []
        lines = self.calls_file.read_text(encoding="utf-8").splitlines()
        self.calls_file.unlink()
        return [json.loads(line) for line in lines]

    def trained(self) -> list[str]:
        """Phase directories trained since the last take (relative to expdir); decodings are dropped."""
        return [str(Path(arg(c["words"], "--output_dir")).relative_to(self.root / "exp"))
                for c in self.take_calls() if c["kind"] == "train"]


def arg(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def decoded_phases(calls: list[dict]) -> list[str]:
    return [Path(arg(c["words"], "--model_dir")).name for c in calls if c["kind"] == "decode"]


def trained_phases(calls: list[dict]) -> list[str]:
    return [Path(arg(c["words"], "--output_dir")).name for c in calls if c["kind"] == "train"]


@pytest.fixture
def recipe(tmp_path: Path) -> Recipe:
    root = tmp_path / WEIRD
    rdir = root / "recipe"
    rdir.mkdir(parents=True)
    links = {"llm.sh": TEMPLATE, "run.sh": FULL / "run.sh", "local": FULL / "local",
             "path.sh": REPO / "path.sh", "utils": REPO / "utils"}
    for name, target in links.items():
        (rdir / name).symlink_to(target)
    shutil.copytree(MINI_CONF, rdir / "conf")  # a private copy: tests edit it
    fake = f"{sys.executable} {FAKE_DISPATCH}"
    (rdir / "cmd.sh").write_text(f'export train_cmd="{fake}" cuda_cmd="{fake}" decode_cmd="{fake}"\n')
    write_corpus(root / "corpus")
    (root / "llm").mkdir()
    common = ["--aishell_dir", str(root / "corpus/data_aishell"), f"--ner_dir={root / 'corpus/aishell_ner'}",
              "--datadir", str(root / "exp/data"), "--dumpdir", str(root / "exp/dump"), "--expdir", str(root / "exp"),
              "--llm", str(root / "llm"), "--ngpu", "0", "--nj", "1", "--inference_nj", "1", "--input_type", "encoder_output",
              "--decode_specs", "phase1:asr:0 phase3:ner:1"]
    return Recipe(rdir, root, tmp_path / "calls.jsonl", common)


def skipped_stages(log: str) -> list[str]:
    return re.findall(r"Stage (\d+): .* is up to date, skipping", log)


def test_help_lists_every_option_without_venv(tmp_path):
    """--help is answered before path.sh, which fails as it does when tools/venv has not been built."""
    rdir = tmp_path / "recipe"
    rdir.mkdir()
    (rdir / "llm.sh").symlink_to(TEMPLATE)
    (rdir / "utils").symlink_to(REPO / "utils")
    (rdir / "path.sh").write_text('echo "path.sh: tools/venv is missing" >&2; return 1 2>/dev/null || exit 1\n')
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(["./llm.sh", "--help"], cwd=rdir, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    block = TEMPLATE.read_text().split("# ==== Options")[1].split("# ==== End of options")[0]
    options = re.findall(r"^([a-z_0-9]+)=", block, re.M)
    assert len(options) > 30
    for name in options:
        assert re.search(rf"^  --{name} +\[", proc.stderr, re.M), f"--{name} missing from --help"
    assert "--phase1_config          [] YAML for phase 1" in proc.stderr
    broken = subprocess.run(["./llm.sh", "--stage", "1"], cwd=rdir, capture_output=True, text=True, env=env, timeout=60)
    assert broken.returncode != 0 and "tools/venv is missing" in broken.stderr


def test_edited_transcript_redoes_stage_1_and_the_stage_2_it_feeds(recipe):
    recipe.run("--stage", "1", "--stop_stage", "2")
    start = time.monotonic()
    again = recipe.run("--stage", "1", "--stop_stage", "2")
    elapsed = time.monotonic() - start
    assert skipped_stages(again) == ["1", "2", "2", "2"], again
    assert elapsed < 5, f"an unchanged rerun of stages 1-2 took {elapsed:.2f} s"

    ner_test = recipe.root / "corpus/aishell_ner/aishell_ner_transcript.test.txt"
    ner_test.write_text(ner_test.read_text(encoding="utf-8").replace("北京", "上海"), encoding="utf-8")
    edited = recipe.run("--stage", "1", "--stop_stage", "2")
    assert "Stage 1: data preparation" in edited and "aishell_ner_transcript.test.txt" in edited
    assert skipped_stages(edited) == ["2", "2"]  # train and dev are unchanged; test is redone
    assert "上海" in (recipe.root / "exp/data/test/text").read_text(encoding="utf-8")


def test_stage_2_follows_a_forced_stage_1(recipe):
    """--force true on stage 1 alone rewrites data/raw; the next run must not keep stage 2's old text."""
    recipe.run("--stage", "1", "--stop_stage", "2")
    ner_dev = recipe.root / "corpus/aishell_ner/aishell_ner_transcript.dev.txt"
    ner_dev.write_text(ner_dev.read_text(encoding="utf-8").replace("银行", "人民银行"), encoding="utf-8")
    recipe.run("--stage", "1", "--stop_stage", "1", "--force", "true")
    after = recipe.run("--stage", "1", "--stop_stage", "2")
    assert skipped_stages(after) == ["1", "2", "2"]
    assert "Stage 2: NER-markup normalisation" in after
    assert "人民银行" in (recipe.root / "exp/data/dev/text").read_text(encoding="utf-8")


def test_changed_yaml_retrains_its_phase_and_the_later_ones_then_redecodes(recipe):
    write_data_dirs(recipe.root / "exp/data")
    recipe.run("--stage", "5", "--stop_stage", "8")
    calls = recipe.take_calls()
    assert [c["kind"] for c in calls] == ["train"] * 3 + ["decode"] * 2 + ["analysis"]
    assert [str(Path(arg(c["words"], "--output_dir")).relative_to(recipe.root / "exp")) for c in calls[:3]] == \
        ["decoder_only/phase1", "decoder_only/phase2", "decoder_only/phase3"]

    start = time.monotonic()
    again = recipe.run("--stage", "5", "--stop_stage", "8")
    elapsed = time.monotonic() - start
    assert skipped_stages(again) == ["5", "6", "7", "8", "8", "8"] and not recipe.take_calls()
    assert elapsed < 5, f"an unchanged rerun of stages 5-8 took {elapsed:.2f} s"

    sentinel = recipe.root / "exp/decoder_only/phase2/old_output"
    sentinel.touch()
    with open(recipe.dir / "conf/train_decoder_only_phase2.yaml", "a") as f:
        f.write("patience: 3\n")
    log = recipe.run("--stage", "5", "--stop_stage", "8")
    calls = recipe.take_calls()
    assert trained_phases(calls) == ["phase2", "phase3"] and decoded_phases(calls) == ["phase3"]
    assert [c["kind"] for c in calls][-1] == "analysis", "the Fig. 2 analysis of retrained phases is redone"
    assert "was trained from other inputs" in log and "train_decoder_only_phase2.yaml" in log
    assert not sentinel.exists(), "a retrained phase must start from scratch"


def test_train_args_inference_args_and_a_retrained_model_are_noticed(recipe):
    write_data_dirs(recipe.root / "exp/data")
    tagged = ("--tag", "sys", "--stage", "5", "--stop_stage", "8")
    recipe.run(*tagged)
    recipe.take_calls()
    recipe.run(*tagged, "--train_args", "--max_epoch 1")
    calls = recipe.take_calls()
    assert trained_phases(calls) == ["phase1", "phase2", "phase3"] and decoded_phases(calls) == ["phase1", "phase3"]
    assert all(c["words"][-2:] == ["--max_epoch", "1"] for c in calls[:3])

    recipe.run(*tagged, "--train_args", "--max_epoch 1", "--inference_args", "--beam_size 2")
    calls = recipe.take_calls()
    assert trained_phases(calls) == [] and decoded_phases(calls) == ["phase1", "phase3"]
    assert calls[0]["words"][-2:] == ["--beam_size", "2"]
    recipe.run(*tagged, "--train_args", "--max_epoch 1", "--inference_args", "--beam_size 2")
    assert not recipe.take_calls()

    # Phase 1 retrained (alone): its decoding is redone at the next stage 8, the phase-3 one is not.
    recipe.run("--tag", "sys", "--stage", "5", "--stop_stage", "5", "--force", "true", "--train_args", "--max_epoch 1")
    recipe.run("--tag", "sys", "--stage", "8", "--stop_stage", "8", "--train_args", "--max_epoch 1",
               "--inference_args", "--beam_size 2")
    assert decoded_phases(recipe.take_calls()) == ["phase1"]


def test_default_tags_come_from_configs_and_train_args(recipe):
    write_data_dirs(recipe.root / "exp/data")
    recipe.run("--stage", "5", "--stop_stage", "5")
    recipe.run("--stage", "5", "--stop_stage", "5", "--train_args", "--max_epoch 1")
    shutil.copy(recipe.dir / "conf/train_decoder_only_phase1.yaml", recipe.dir / "conf/train_decoder_only_big_phase1.yaml")
    recipe.run("--stage", "5", "--stop_stage", "5", "--phase1_config", "conf/train_decoder_only_big_phase1.yaml",
               "--phase2_config", "conf/train_decoder_only_phase2.yaml")
    recipe.run("--stage", "5", "--stop_stage", "5", "--system", "conformer")
    calls = recipe.take_calls()
    assert [str(Path(arg(c["words"], "--output_dir")).relative_to(recipe.root / "exp")) for c in calls] == \
        ["decoder_only/phase1", "decoder_only_max_epoch1/phase1", "decoder_only_big-decoder_only-decoder_only/phase1",
         "conformer/phase1"]
    assert arg(calls[-1]["words"], "--config") == "conf/train_conformer.yaml"


def test_mel_input_trains_under_its_own_tag_from_a_given_phase_1(recipe):
    """--input_type mel runs Whisper in training (encoder: whisper) under <tag>_mel; --phase1_dir links
    another system's phase 1 and starts phase 2 from it."""
    write_data_dirs(recipe.root / "exp/data")
    recipe.run("--stage", "5", "--stop_stage", "5")
    recipe.take_calls()
    (recipe.root / "whisper").mkdir()
    phase1 = recipe.root / "exp/decoder_only/phase1"
    mel = ["--input_type", "mel", "--whisper", str(recipe.root / "whisper")]
    recipe.run("--stage", "5", "--stop_stage", "7", *mel, "--phase1_dir", str(phase1))
    calls = [c["words"] for c in recipe.take_calls()]
    assert [str(Path(arg(c, "--output_dir")).relative_to(recipe.root / "exp")) for c in calls] == \
        ["decoder_only_mel/phase2", "decoder_only_mel/phase3"]
    assert all(arg(c, "--encoder") == "whisper" and "path=" + str(recipe.root / "whisper") in c for c in calls)
    assert Path(arg(calls[0], "--init_param")).resolve() == (phase1 / "valid.acc.ave.pth").resolve()
    assert (recipe.root / "exp/decoder_only_mel/phase1").resolve() == phase1.resolve()
    other = recipe.root / "exp/decoder_only_max_epoch1/phase1"
    other.mkdir(parents=True)
    (other / "valid.acc.ave.pth").write_text("x")
    refused = recipe.run("--stage", "6", "--stop_stage", "6", *mel, "--phase1_dir", str(other), ok=False)
    assert "decoder_only_mel/phase1 exists and is not" in refused


def test_arch_in_equals_form_trains_the_encoder_decoder_yamls(recipe):
    write_data_dirs(recipe.root / "exp/data")
    recipe.run("--stage", "5", "--stop_stage", "5", "--arch=encoder_decoder")
    (call,) = [c["words"] for c in recipe.take_calls()]
    assert arg(call, "--config") == "conf/train_encoder_decoder_phase1.yaml"
    assert Path(arg(call, "--output_dir")) == recipe.root / "exp/encoder_decoder/phase1"


def test_connector_that_does_not_match_the_arch_is_refused(recipe):
    write_data_dirs(recipe.root / "exp/data")
    log = recipe.run("--stage", "5", "--stop_stage", "7", "--arch", "encoder_decoder",
                     "--phase2_config=conf/train_decoder_only_phase2.yaml", ok=False)
    assert "conf/train_decoder_only_phase2.yaml (phase 2) has connector: adapter" in log
    assert "--arch encoder_decoder needs connector: cross_attention" in log
    assert not recipe.take_calls()


def test_phase_whose_inputs_changed_after_it_started_is_not_resumed(recipe):
    write_data_dirs(recipe.root / "exp/data")
    phase1 = recipe.root / "exp/decoder_only/phase1"
    recipe.run("--stage", "5", "--stop_stage", "5", env={"FAKE_INTERRUPT": "1"}, ok=False)
    # The same settings: ESPnet resumes from its checkpoint.
    resumed = recipe.run("--stage", "5", "--stop_stage", "5", env={"FAKE_INTERRUPT": "1"}, ok=False)
    assert "resuming: started with the same inputs" in resumed
    recipe.take_calls()
    with open(recipe.dir / "conf/train_decoder_only_phase1.yaml", "a") as f:
        f.write("patience: 3\n")
    refused = recipe.run("--stage", "5", "--stop_stage", "5", ok=False)
    (line,) = [line for line in refused.splitlines() if "Error" in line]
    assert str(phase1) in line and "--force true" in line and "--tag" in line and "train_decoder_only_phase1.yaml" in line
    assert not recipe.take_calls() and (phase1 / "checkpoint.pth").exists()

    (phase1 / "old_output").touch()
    recipe.run("--stage", "5", "--stop_stage", "5", "--force", "true")
    assert recipe.trained() == ["decoder_only/phase1"] and not (phase1 / "old_output").exists()


def _stage_stamp():
    spec = importlib.util.spec_from_file_location("stage_stamp", REPO / "utils/stage_stamp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stamp_items_see_content_size_mtime_and_listed_files(tmp_path):
    stamp = _stage_stamp()
    tree = tmp_path / "wav"
    (tree / "S1").mkdir(parents=True)
    wav = tree / "S1/a.wav"
    wav.write_bytes(b"0" * 10)
    scp = tmp_path / "wav.scp"
    scp.write_text(f"a {wav}\nb sox x.flac -t wav - |\n")
    items = [f"stat:{tree}", f"scp:{scp}", f"file:{scp}", "opt:x=1"]
    before = stamp.manifest_of(items)
    assert before == stamp.manifest_of(items)
    (tree / ".done").touch()  # markers inside a walked directory do not count
    assert before == stamp.manifest_of(items)
    os.utime(wav, ns=(1, 1))  # same content, other mtime: large files are known by size and mtime
    after = stamp.manifest_of(items)
    assert after[f"stat:{tree}"] != before[f"stat:{tree}"] and after[f"scp:{scp}"] != before[f"scp:{scp}"]
    assert after[f"file:{scp}"] == before[f"file:{scp}"]
    assert stamp.manifest_of(["opt:x=2"]) != stamp.manifest_of(["opt:x=1"])
    with pytest.raises(stamp.ItemError):
        stamp.manifest_of(["size:/x"])


def test_stamp_deps_are_read_from_the_last_run_and_recorded_after_this_one(tmp_path, capsys):
    stamp = _stage_stamp()
    marker, pending, deps, corpus = (str(tmp_path / n) for n in (".done", ".done.new", "deps", "corpus.txt"))
    Path(corpus).write_text("a\n")
    assert stamp.check(marker, pending, ["opt:x=1"], deps, force=False) == 1
    Path(deps).write_text(f"file:{corpus}\n")  # written by the stage while it runs
    assert stamp.commit(marker, pending, deps) == 0 and not os.path.exists(pending)
    assert stamp.check(marker, pending, ["opt:x=1"], deps, force=False) == 0
    Path(corpus).write_text("b\n")
    capsys.readouterr()
    assert stamp.check(marker, pending, ["opt:x=1"], deps, force=False) == 1
    assert capsys.readouterr().out.strip() == f"changed: file {corpus}"
    assert stamp.check(marker, pending, ["opt:x=1"], deps, force=True) == 1
