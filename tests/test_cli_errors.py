"""Commands end on bad input with one line (``PROG: error: ...``, exit 2); tracebacks only with --verbose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from espnet2_ext.cli import VERBOSE_ENV, add_verbose_argument, run_cli
from espnet2_ext.errors import UserError
from espnet2_ext.text.kaldi_text import KaldiTextError

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / "espnet2_ext" / "bin"


def _fails_with(error: BaseException):
    def main(argv: list[str]) -> int:
        raise error

    return main


def test_a_user_error_is_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    status = run_cli(_fails_with(KaldiTextError("data/text", 3, "blank line")), [])
    assert status == 2
    assert capsys.readouterr().err == "test_cli_errors: error: data/text:3: blank line\n"


def _yaml_error() -> yaml.YAMLError:
    try:
        yaml.safe_load("a: [1,\n")
    except yaml.YAMLError as err:
        return err
    raise AssertionError("the YAML parsed")


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (FileNotFoundError(2, "No such file or directory", "exp/x.pth"), "exp/x.pth: No such file or directory"),
        (UserError("--tokenizer_file is required"), "--tokenizer_file is required"),
        (_yaml_error(), "while parsing a flow node expected the node content, but found"),
    ],
)
def test_messages_are_single_lines(capsys, monkeypatch, error, line):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    assert run_cli(_fails_with(error), []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"test_cli_errors: error: {line}")


def test_a_checkpoint_error_counts_as_a_user_error(capsys):
    from espnet2_ext.checkpoint_io import CheckpointError

    assert run_cli(_fails_with(CheckpointError("exp/checkpoint.pth: truncated")), []) == 2
    assert capsys.readouterr().err.endswith("error: exp/checkpoint.pth: truncated\n")


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        run_cli(_fails_with(ZeroDivisionError("division by zero")), [])
    with pytest.raises(ValueError):  # a plain ValueError is not known to be the user's fault
        run_cli(_fails_with(ValueError("shapes differ")), [])


def test_verbose_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    assert run_cli(_fails_with(UserError("bad")), ["--verbose"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.endswith("test_cli_errors: error: bad\n")
    monkeypatch.setenv(VERBOSE_ENV, "1")
    assert run_cli(_fails_with(UserError("bad")), []) == 2
    assert capsys.readouterr().err.startswith("Traceback")


def test_exit_status_of_main_is_returned():
    assert run_cli(lambda argv: None, []) == 0
    assert run_cli(lambda argv: 1, []) == 1


def test_every_command_ends_through_run_cli():
    commands = sorted(p for p in BIN.glob("*.py") if p.name != "__init__.py")
    assert len(commands) >= 17
    for path in commands:
        text = path.read_text(encoding="utf-8")
        assert text.rstrip().endswith('if __name__ == "__main__":\n    sys.exit(run_cli(main))'), path.name
        # argparse commands declare --verbose; those handing options to ESPnet's parser document the variable
        assert "add_verbose_argument(parser)" in text or VERBOSE_ENV in text, path.name


def test_add_verbose_argument():
    import argparse

    parser = argparse.ArgumentParser()
    add_verbose_argument(parser)
    assert parser.parse_args(["--verbose"]).verbose and not parser.parse_args([]).verbose


def _run(module: str, *args: str, verbose: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != VERBOSE_ENV}
    command = [sys.executable, "-m", f"espnet2_ext.bin.{module}", *args, *(["--verbose"] if verbose else [])]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False)


def test_score_ner_on_a_missing_file(tmp_path):
    ref = tmp_path / "ref"
    args = ("--ref", str(ref), "--hyp", str(ref), "--out", str(tmp_path / "out"))
    proc = _run("score_ner", *args)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"score_ner: error: {ref}: No such file or directory\n")
    verbose = _run("score_ner", *args, verbose=True)
    assert verbose.returncode == 2 and verbose.stderr.startswith("Traceback")
    assert verbose.stderr.endswith(f"score_ner: error: {ref}: No such file or directory\n")


def test_dump_feats_on_a_malformed_wav_scp(tmp_path):
    wav_scp = tmp_path / "wav.scp"
    wav_scp.write_text("utt1 a.wav\nlonely\n", encoding="utf-8")
    proc = _run("dump_feats", "--wav_scp", str(wav_scp), "--out_dir", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == f"dump_feats: error: {wav_scp}:2: expected 'uttid path', got only 'lonely'"
