"""The feature dump CLI on tiny wavs written here and a tiny HF Whisper; float16/float32 storage and its checks."""

from __future__ import annotations

import json
import logging
import re

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch
from espnet2.train.dataset import ESPnetDataset
from helpers_tiny import TEXTS, make_tokenizer, write_dataset

from espnet2_ext.bin.check_feats import main as check_feats
from espnet2_ext.bin.dump_feats import main
from espnet2_ext.feats_io import FeatureDtypeError, check_dump_dtype, feature_writer, open_features, to_dump_dtype
from espnet2_ext.speechllm.frontend import whisper_log_mel
from espnet2_ext.speechllm.preprocessor import SpeechLLMPreprocessor
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
        assert feats[uttid].dtype == np.float16 and np.allclose(feats[uttid], want, atol=1e-3, rtol=1e-3)
        assert shapes[uttid] == f"{len(wave) // 160},80"
    assert set(bad) == {"utt3_rate", "utt4_missing", "utt5_pipe"}
    assert "8000 Hz" in bad["utt3_rate"] and "rate.wav" in bad["utt3_rate"]
    assert "not found" in bad["utt4_missing"] and "nowhere.wav" in bad["utt4_missing"]
    assert "pipe" in bad["utt5_pipe"]
    assert main([*args, "--name", "feats.2", "--strict"]) == 1
    with pytest.raises(ValueError, match=r"feats_conf.json records a dump made with other settings.*would mix"):
        main([*args, "--name", "feats.3", "--dump_dtype", "float32"])


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
        assert main([*argv, "--dump_dtype", "float32"]) == 0
        feats, shapes, bad = read_outputs(out, "enc.1")
        assert bad == {}
        assert main([*argv, "--out_dir", str(out / "f16")]) == 0  # the default: float16, the same values rounded
        halves = dict(kaldiio.load_scp(str(out / "f16/enc.1.scp")))
        for uttid, matrix in feats.items():
            assert halves[uttid].dtype == np.float16 and np.array_equal(halves[uttid], matrix.astype(np.float16))
        assert json.loads((out / "f16/enc_conf.json").read_text())["dump_dtype"] == "float16"
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
    assert "longer than Whisper's 30-s window" in (tmp_path / "b" / "bad_utts").read_text()
    # log-mel for the paper's path: Whisper runs on it in training, so it is listed as bad too
    assert main([*base[:-1], "--out_dir", str(tmp_path / "c"), "--strict"]) == 1
    assert (tmp_path / "c" / "bad_utts").read_text().startswith("long 30.5 s is longer than Whisper's 30-s window")


def test_malformed_inputs_name_file_and_line(data):
    root, _ = data
    (root / "keys.3").write_text("utt1\nutt_unknown\n")
    with pytest.raises(ValueError, match=r"keys.3:2: utterance utt_unknown is not in"):
        main(["--wav_scp", str(root / "wav.scp"), "--key_file", str(root / "keys.3"), "--out_dir", str(root / "o")])
    (root / "bad.scp").write_text("utt1 a.wav\nlonely\n")
    with pytest.raises(ValueError, match=r"bad.scp:2: expected 'uttid path'"):
        main(["--wav_scp", str(root / "bad.scp"), "--out_dir", str(root / "o")])


def test_float16_archives_round_trip_at_half_the_size(tmp_path):
    rng = np.random.default_rng(0)
    mats = {f"u{i}": rng.standard_normal((200 + 50 * i, 1280)).astype(np.float32) for i in range(4)}
    sizes = {}
    for dtype in ("float16", "float32"):
        with feature_writer(tmp_path / f"{dtype}.ark", tmp_path / f"{dtype}.scp", dtype) as writer:
            for uid, mat in mats.items():
                writer(uid, to_dump_dtype(uid, mat, dtype))
        sizes[dtype] = (tmp_path / f"{dtype}.ark").stat().st_size
        back = open_features(tmp_path / f"{dtype}.scp")
        for uid, mat in mats.items():
            assert back[uid].dtype == np.dtype(dtype) and np.array_equal(back[uid], mat.astype(dtype))
    assert 1.99 < sizes["float32"] / sizes["float16"] <= 2.0
    with pytest.raises(FeatureDtypeError, match="utterance big: values up to 70000 exceed float16's range"):
        to_dump_dtype("big", np.full((2, 2), 7e4, np.float32), "float16")


def test_a_dump_mixing_float16_and_float32_archives_is_refused(tmp_path):
    make_tokenizer(tmp_path)
    (tmp_path / "text").write_text("".join(f"{u} {t}\n" for u, t in TEXTS.items()), encoding="utf-8")
    mats = {uid: np.ones((4, 8), np.float32) for uid in TEXTS}
    for job, (dtype, uids) in enumerate((("float16", list(TEXTS)[:2]), ("float32", list(TEXTS)[2:])), start=1):
        with feature_writer(tmp_path / f"feats.{job}.ark", tmp_path / f"feats.{job}.scp", dtype) as writer:
            for uid in uids:
                writer(uid, to_dump_dtype(uid, mats[uid], dtype))
    merged = tmp_path / "feats.scp"
    merged.write_text((tmp_path / "feats.1.scp").read_text() + (tmp_path / "feats.2.scp").read_text())
    message = r"feats.scp: its archives mix dtypes \(float16: .*feats.1.ark; float32: .*feats.2.ark\)"
    with pytest.raises(FeatureDtypeError, match=message):
        check_feats([str(merged)])  # stage 3, after merging the jobs' scp files
    with pytest.raises(FeatureDtypeError, match=message):
        SpeechLLMPreprocessor(train=True, tokenizer_file=str(tmp_path / "spm.model"), feats_scp=str(merged),
                              text_file=str(tmp_path / "text"))
    assert check_dump_dtype(tmp_path / "feats.1.scp") == np.float16
    (tmp_path / "feats_conf.json").write_text(json.dumps(
        {"input_type": "encoder_output", "pad_to_30s": False, "n_mels": 80, "dump_dtype": "float32"}))
    message = r"feats.1.scp: its archives hold float16, but .*records dump_dtype float32"
    with pytest.raises(FeatureDtypeError, match=message):
        check_dump_dtype(tmp_path / "feats.1.scp")


def test_progress_lines_say_done_total_rate_and_eta(data, caplog):
    root, _ = data
    (root / "keys.1").write_text("utt1\nutt2\nutt3_rate\n")
    args = ["--wav_scp", str(root / "wav.scp"), "--key_file", str(root / "keys.1"), "--out_dir", str(root / "p"),
            "--name", "feats.1", "--log_every", "1"]
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    lines = [r.getMessage() for r in caplog.records if "utt/s" in r.getMessage()]
    done = [int(re.search(r": (\d)/3 utt", line).group(1)) for line in lines]
    assert done == sorted(done) and done[-1] == 3 and len(lines) >= 2
    assert all(re.search(r"\d+\.\d+ utt/s, elapsed \d+:\d\d:\d\d, ETA \d+:\d\d:\d\d$", line) for line in lines)


def test_a_gpu_dump_without_a_gpu_is_an_error(data, monkeypatch):
    root, _ = data
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cuda asks for a GPU, but torch sees none"):
        main(["--wav_scp", str(root / "wav.scp"), "--out_dir", str(root / "g"), "--device", "cuda"])


def test_espnet_training_data_reads_float16_dumps(tmp_path):
    """ESPnet's kaldi_ark data type and the preprocessor (history read by id) take float16 dumps as float32."""
    make_tokenizer(tmp_path)
    paths = write_dataset(tmp_path / "data")
    halves = {u: m.astype(np.float16) for u, m in kaldiio.load_scp(str(paths["feats.scp"])).items()}
    with feature_writer(tmp_path / "feats.ark", tmp_path / "feats.scp", "float16") as writer:
        for uid, matrix in halves.items():
            writer(uid, matrix)
    scp = str(tmp_path / "feats.scp")
    preprocess = SpeechLLMPreprocessor(
        train=False, tokenizer_file=str(tmp_path / "spm.model"), feats_scp=scp, text_file=str(paths["text"]),
        history_file=str(paths["history"]), eval_task="cot_ner", eval_history=1,
    )
    dataset = ESPnetDataset([(scp, "speech", "kaldi_ark"), (str(paths["text"]), "text", "text")], preprocess=preprocess)
    _, example = dataset["spk1_u2"]
    expected = np.concatenate([halves["spk1_u1"], halves["spk1_u2"]]).astype(np.float32)
    assert example["speech"].dtype == np.float32 and np.array_equal(example["speech"], expected)
