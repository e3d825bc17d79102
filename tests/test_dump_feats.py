"""The feature dump CLI on tiny wavs written here and a tiny HF Whisper."""

from __future__ import annotations

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch

from espnet2_ext.bin.dump_feats import main
from espnet2_ext.speechllm.frontend import whisper_log_mel
from espnet2_ext.speechllm.whisper_encoder import load_whisper_encoder
from espnet2_ext.upstream_formats import save_whisper_hf, tiny_whisper_config


def sine(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def data(tmp_path):
    """wav.scp with two good utterances and one of each kind of bad one."""
    waves = {}
    lines = []
    for uttid, wave in {"utt1": sine(0.5), "utt2": sine(1.23, 880.0)}.items():
        sf.write(tmp_path / f"{uttid}.wav", wave, 16000)  # 16-bit PCM, as corpora ship
        waves[uttid] = sf.read(tmp_path / f"{uttid}.wav", dtype="float32")[0]
        lines.append(f"{uttid} {tmp_path / f'{uttid}.wav'}")
    sf.write(tmp_path / "rate.wav", sine(0.5), 8000)
    lines += [
        f"utt3_rate {tmp_path / 'rate.wav'}",
        f"utt4_missing {tmp_path / 'nowhere.wav'}",
        "utt5_pipe sox x.flac -t wav - |",
    ]
    (tmp_path / "wav.scp").write_text("\n".join(lines) + "\n")
    (tmp_path / "keys.2").write_text("utt1\nutt2\nutt3_rate\nutt4_missing\nutt5_pipe\n")
    return tmp_path, waves


def read_outputs(out_dir, name="feats.2"):
    feats = dict(kaldiio.load_scp(str(out_dir / f"{name}.scp")))
    stem, job = name.split(".")
    shapes = dict(line.split() for line in (out_dir / f"{stem}_shape.{job}").read_text().splitlines())
    bad = dict(line.split(" ", 1) for line in (out_dir / f"bad_utts.{job}").read_text().splitlines())
    return feats, shapes, bad


def test_log_mel_dump_lists_bad_items(data):
    root, waves = data
    args = ["--wav_scp", str(root / "wav.scp"), "--key_file", str(root / "keys.2"), "--out_dir", str(root / "out")]
    assert main([*args, "--name", "feats.2", "--n_mels", "80"]) == 0
    feats, shapes, bad = read_outputs(root / "out")
    assert list(feats) == ["utt1", "utt2"]
    for uttid, wave in waves.items():
        want = whisper_log_mel(torch.from_numpy(wave))[0].numpy()
        assert feats[uttid].dtype == np.float32 and np.allclose(feats[uttid], want, atol=1e-6)
        assert shapes[uttid] == f"{len(wave) // 160},80"
    assert set(bad) == {"utt3_rate", "utt4_missing", "utt5_pipe"}
    assert "8000 Hz" in bad["utt3_rate"] and "rate.wav" in bad["utt3_rate"]
    assert "not found" in bad["utt4_missing"] and "nowhere.wav" in bad["utt4_missing"]
    assert "pipe" in bad["utt5_pipe"]
    assert main([*args, "--name", "feats.2", "--strict"]) == 1


def test_encoder_dump_equals_encoder_run(data):
    root, waves = data
    whisper = root / "whisper"
    save_whisper_hf(tiny_whisper_config(n_mels=128, d_model=16), whisper)
    (root / "keys.1").write_text("utt1\nutt2\n")
    for pad_to_30s in ("false", "true"):
        out = root / f"enc_{pad_to_30s}"
        argv = ["--wav_scp", str(root / "wav.scp"), "--key_file", str(root / "keys.1"), "--out_dir", str(out),
                "--name", "enc.1", "--whisper", str(whisper), "--encoder_out", "--pad_to_30s", pad_to_30s,
                "--batch_size", "2"]  # fmt: skip
        assert main(argv) == 0
        feats, shapes, bad = read_outputs(out, "enc.1")
        assert bad == {}
        encoder = load_whisper_encoder(whisper, pad_to_30s=pad_to_30s == "true")
        for uttid, wave in waves.items():
            mel = whisper_log_mel(torch.from_numpy(wave), n_mels=128, pad_to_30s=pad_to_30s == "true")
            with torch.no_grad():
                hs, hs_lengths = encoder(mel, torch.tensor([len(wave) // 160]))
            frames = (len(wave) // 160 - 1) // 2 + 1
            assert hs_lengths.tolist() == [frames] and shapes[uttid] == f"{frames},16"
            assert np.abs(feats[uttid] - hs[0, :frames].numpy()).max() <= 1e-4


def test_long_audio_is_cropped_in_30s_mode_and_refused_otherwise(tmp_path):
    sf.write(tmp_path / "long.wav", sine(30.5), 16000)
    (tmp_path / "wav.scp").write_text(f"long {tmp_path / 'long.wav'}\n")
    whisper = tmp_path / "whisper"
    save_whisper_hf(tiny_whisper_config(), whisper)
    base = ["--wav_scp", str(tmp_path / "wav.scp"), "--whisper", str(whisper), "--encoder_out"]
    assert main([*base, "--out_dir", str(tmp_path / "a"), "--pad_to_30s", "true"]) == 0
    assert (tmp_path / "a" / "feats_shape").read_text() == "long 1500,16\n"
    assert main([*base, "--out_dir", str(tmp_path / "b"), "--strict"]) == 1
    assert "longer than the encoder's 30 s" in (tmp_path / "b" / "bad_utts").read_text()


def test_malformed_inputs_name_file_and_line(data):
    root, _ = data
    (root / "keys.3").write_text("utt1\nutt_unknown\n")
    with pytest.raises(ValueError, match=r"keys.3:2: utterance utt_unknown is not in"):
        main(["--wav_scp", str(root / "wav.scp"), "--key_file", str(root / "keys.3"), "--out_dir", str(root / "o")])
    (root / "bad.scp").write_text("utt1 a.wav\nlonely\n")
    with pytest.raises(ValueError, match=r"bad.scp:2: expected 'uttid path'"):
        main(["--wav_scp", str(root / "bad.scp"), "--out_dir", str(root / "o")])
