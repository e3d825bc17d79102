"""Every Kaldi table reader accepts a UTF-8 BOM and CRLF line ends (read in one place); truncated wavs are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from espnet2_ext.bin.normalize_ner import normalize_file
from espnet2_ext.data.validate import validate_data_dir
from espnet2_ext.scoring import score_files
from espnet2_ext.text.kaldi_text import (
    BadAudio,
    KaldiTextError,
    read_history_file,
    read_kaldi_text,
    read_keys,
    read_wav_scp,
    read_wave,
    wav_truncation,
)

BOM = "\ufeff"


def windows_file(path: Path, lines: list[str]) -> Path:
    """``lines`` as an editor on Windows saves them: a byte-order mark and CRLF line ends."""
    path.write_bytes((BOM + "".join(f"{line}\r\n" for line in lines)).encode("utf-8"))
    return path


@pytest.mark.parametrize(
    ("reader", "lines", "expected"),
    [
        (read_kaldi_text, ["u1 北京 欢迎", "u2"], {"u1": "北京 欢迎", "u2": ""}),
        (read_wav_scp, ["u1 /a/u1.wav", "u2 sox x.flac -t wav - |"], {"u1": "/a/u1.wav", "u2": "sox x.flac -t wav - |"}),
        (read_history_file, ["u1", "u2 u1", "u3 u1 u2"], {"u1": [], "u2": ["u1"], "u3": ["u1", "u2"]}),
        (lambda path: read_keys(path, {"u1", "u2"}, "wav.scp"), ["u2", "u1 extra fields"], ["u2", "u1"]),
    ],
    ids=["text", "wav.scp", "history", "keys"],
)
def test_readers_take_bom_and_crlf(tmp_path, reader, lines, expected):
    assert reader(windows_file(tmp_path / "table", lines)) == expected


def test_trailing_blank_lines_are_ignored_but_not_blank_lines_between(tmp_path):
    path = tmp_path / "text"
    path.write_bytes(b"u1 a\r\nu2 b\n\n \r\n")
    assert read_kaldi_text(path) == {"u1": "a", "u2": "b"}
    path.write_bytes(b"u1 a\n\nu2 b\n")
    with pytest.raises(KaldiTextError, match="text:2: blank line"):
        read_kaldi_text(path)


def test_a_bom_after_the_first_line_is_an_error(tmp_path):
    path = tmp_path / "text"
    path.write_bytes(f"u1 a\n{BOM}u2 b\n".encode("utf-8"))  # two files concatenated
    with pytest.raises(KaldiTextError, match="text:2: byte-order mark inside the file"):
        read_kaldi_text(path)


def test_validation_normalisation_and_scoring_read_bom_and_crlf(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    wav = tmp_path / "u.wav"
    sf.write(wav, np.zeros(1600, dtype=np.int16), 16000, subtype="PCM_16")
    files = {
        "wav.scp": [f"S1_u1 {wav}", f"S1_u2 {wav}"], "text": ["S1_u1 (北京)", "S1_u2 [张三]"],
        "utt2spk": ["S1_u1 S1", "S1_u2 S1"], "spk2utt": ["S1 S1_u1 S1_u2"], "history": ["S1_u1", "S1_u2 S1_u1"],
    }  # fmt: skip
    for name, lines in files.items():
        windows_file(data / name, lines)
    assert validate_data_dir(data) == []

    assert normalize_file(data / "text", tmp_path / "norm", tmp_path / "rejected") == (2, 0)
    assert (tmp_path / "norm").read_bytes() == "S1_u1 (北京)\nS1_u2 [张三]\n".encode("utf-8")

    hyp = tmp_path / "hyp"
    hyp.write_text("S1_u1 (北京)\nS1_u2 [张山]\n", encoding="utf-8")
    plain_ref = tmp_path / "ref"
    plain_ref.write_text("S1_u1 (北京)\nS1_u2 [张三]\n", encoding="utf-8")
    with_bom, plain = (score_files(ref, hyp).to_json() for ref in (data / "text", plain_ref))
    assert with_bom["cer"] == plain["cer"] > 0 and with_bom["counts"] == plain["counts"]


def test_truncated_wav_is_refused_naming_the_file(tmp_path):
    wav = tmp_path / "u.wav"
    sf.write(wav, np.zeros(16000, dtype=np.int16), 16000, subtype="PCM_16")
    assert wav_truncation(wav) is None and len(read_wave(wav, 16000)) == 16000
    wav.write_bytes(wav.read_bytes()[:20044])  # header (44 bytes) + 10000 of 16000 samples
    assert wav_truncation(wav) == "truncated: the header promises 32000 data bytes, the file holds 20000"
    with pytest.raises(BadAudio, match=f"{wav}: truncated: the header promises 32000 data bytes"):
        read_wave(wav, 16000)
    wav.write_bytes(wav.read_bytes()[:30])  # cut inside the header
    assert wav_truncation(wav) == "truncated: no data chunk in its 30 bytes"
    (tmp_path / "not.wav").write_bytes(b"fLaC and more")
    assert wav_truncation(tmp_path / "not.wav") is None  # other formats are soundfile's to judge
