"""Speech2TextNER from a packed dir on raw audio (waveform and wav file) == the CLI engine on dumped encoder outputs;
the packed model's recorded input settings; bad audio refused, doubtful audio flagged."""

import json

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from helpers_tiny import train_tiny_experiment

from espnet2_ext.api import BadInputAudio, Request, Speech2TextNER
from espnet2_ext.bin.dump_feats import main as dump_feats
from espnet2_ext.bin.pack_model import pack
from espnet2_ext.speechllm.decoding import DecodingOptions
from espnet2_ext.speechllm.input_settings import FeatureSettings, settings_file, write_feature_settings
from espnet2_ext.text.ner_markup import parse_markup
from espnet2_ext.upstream_formats import save_whisper_hf, tiny_whisper_config

OPTIONS = DecodingOptions(maxlen_const=6, maxlenratio=0.2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    experiment = train_tiny_experiment(tmp, "--llm_finetune", "lora", "--lora_conf", "r=2")
    whisper = tmp / "whisper"
    save_whisper_hf(tiny_whisper_config(n_mels=80, d_model=8), whisper)  # 8 = the tiny model's encoder width
    return experiment, whisper


def dumped_with(experiment: dict, pad_to_30s: bool) -> None:
    """Record next to the training features what bin/dump_feats.py records (the tiny set is random 'encoder outputs')."""
    record = settings_file(experiment["data"]["feats.scp"])
    write_feature_settings(record, FeatureSettings("encoder_output", pad_to_30s, n_mels=80))


@pytest.fixture(scope="module")
def packed(trained, tmp_path_factory):
    """The tiny model packed as trained on encoder outputs of unpadded input."""
    experiment, whisper = trained
    dumped_with(experiment, pad_to_30s=False)
    return pack(experiment["exp"], "valid.acc.ave.pth", tmp_path_factory.mktemp("packed")), experiment, whisper


@pytest.fixture(scope="module")
def api(packed) -> Speech2TextNER:
    out, experiment, whisper = packed
    return Speech2TextNER.from_pretrained(out, whisper=whisper, llm=experiment["llm"], options=OPTIONS)


def test_pack_holds_only_trained_parts_and_the_input_settings(packed):
    out, experiment, _ = packed
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.yaml", "meta.json", "model.pth", "tokenizer.model"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["llm_conf"]["path"].startswith("PLACEHOLDER") and config["tokenizer_file"] == "tokenizer.model"
    assert "train_data_path_and_name_and_type" not in config
    state = torch.load(out / "model.pth", weights_only=True)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["packed_parameters"] == sum(v.numel() for v in state.values())
    assert meta["packed_parameters"] == meta["parameters"]["all"]["trainable"] < meta["parameters"]["all"]["total"]
    assert meta["input"] == {"input_type": "encoder_output", "pad_to_30s": False, "n_mels": 80, "sample_rate": 16000,
                             "stack": 2}


def test_pack_refuses_frozen_weights(packed, tmp_path):
    _, experiment, _ = packed
    state = torch.load(experiment["exp"] / "valid.acc.ave.pth", weights_only=True)
    state["encoder.frozen_weight"] = torch.zeros(1)
    model_dir = tmp_path / "bad"
    model_dir.mkdir()
    (model_dir / "config.yaml").write_text((experiment["exp"] / "config.yaml").read_text())
    torch.save(state, model_dir / "bad.pth")
    with pytest.raises(ValueError, match="refusing to pack"):
        pack(model_dir, "bad.pth", tmp_path / "out")


def test_pack_needs_the_padding_when_the_dump_did_not_record_it(trained, tmp_path):
    experiment, _ = trained
    record = settings_file(experiment["data"]["feats.scp"])
    record.unlink(missing_ok=True)
    with pytest.raises(ValueError, match="feats_conf.json not found.*give --pad_to_30s"):
        pack(experiment["exp"], "valid.acc.ave.pth", tmp_path / "a")
    out = pack(experiment["exp"], "valid.acc.ave.pth", tmp_path / "b", pad_to_30s=True)
    assert json.loads((out / "meta.json").read_text())["input"]["pad_to_30s"] is True
    dumped_with(experiment, pad_to_30s=False)
    with pytest.raises(ValueError, match="--pad_to_30s True contradicts .*feats_conf.json"):
        pack(experiment["exp"], "valid.acc.ave.pth", tmp_path / "c", pad_to_30s=True)


@pytest.mark.parametrize("pad_to_30s", [False, True])
def test_audio_api_decodes_as_trained_and_matches_dumped_encoder_outputs(trained, tmp_path, pad_to_30s):
    experiment, whisper = trained
    dumped_with(experiment, pad_to_30s)
    out = pack(experiment["exp"], "valid.acc.ave.pth", tmp_path / "packed")
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(16000 + 3000 * i).astype(np.float32) for i in range(3)]
    for i, wave in enumerate(waves):
        sf.write(tmp_path / f"u{i}.wav", wave, 16000, subtype="FLOAT")
    (tmp_path / "wav.scp").write_text("".join(f"u{i} {tmp_path}/u{i}.wav\n" for i in range(3)))
    dump_feats(["--wav_scp", str(tmp_path / "wav.scp"), "--out_dir", str(tmp_path / "dump"),
                "--encoder_out", "--whisper", str(whisper), "--pad_to_30s", str(pad_to_30s).lower()])
    assert FeatureSettings(**json.loads((tmp_path / "dump/feats_conf.json").read_text())).pad_to_30s is pad_to_30s
    feats = kaldiio.load_scp(str(tmp_path / "dump/feats.scp"))

    exp = experiment["exp"]
    cli = Speech2TextNER.from_config(exp / "config.yaml", exp / "valid.acc.ave.pth",
                                     llm_conf={"path": str(experiment["llm"])}, options=OPTIONS)
    expected = cli.decode_requests([Request(f"u{i}", feats[f"u{i}"]) for i in range(3)], "ner")

    api = Speech2TextNER.from_pretrained(out, whisper=whisper, llm=experiment["llm"], options=OPTIONS, batch_size=2)
    assert api.frontend.pad_to_30s is pad_to_30s and api.model.encoder.whisper.pad_to_30s is pad_to_30s
    from_files = api([tmp_path / f"u{i}.wav" for i in range(3)])
    from_arrays = api(waves, sample_rate=16000)
    assert [r.text for r in from_files] == [r.text for r in from_arrays] == [d.text for d in expected]
    assert [r.plain for r in from_files] == [d.plain for d in expected]
    assert [r.warnings for r in from_files] == [d.problems for d in expected]
    assert api(waves[0], sample_rate=16000)[0].entities == parse_markup(expected[0].text).entities


def test_from_pretrained_refuses_an_explicit_mismatch_and_needs_old_packs_told(packed, tmp_path):
    out, experiment, whisper = packed
    with pytest.raises(ValueError, match=r"pad_to_30s=True, but .* trained with pad_to_30s=False .*leave pad_to_30s unset"):
        Speech2TextNER.from_pretrained(out, whisper=whisper, llm=experiment["llm"], pad_to_30s=True)
    as_trained = Speech2TextNER.from_pretrained(out, whisper=whisper, llm=experiment["llm"], pad_to_30s=False)
    assert as_trained.frontend.pad_to_30s is False
    old = tmp_path / "old"
    old.mkdir()
    for f in out.iterdir():
        (old / f.name).write_bytes(f.read_bytes())
    meta = json.loads((old / "meta.json").read_text())
    del meta["input"]
    (old / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not record the input settings.*pass pad_to_30s="):
        Speech2TextNER.from_pretrained(old, whisper=whisper, llm=experiment["llm"])
    assert Speech2TextNER.from_pretrained(old, whisper=whisper, llm=experiment["llm"], pad_to_30s=False).frontend.pad_to_30s is False


def _good(seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    return (0.1 * np.random.default_rng(1).standard_normal(int(seconds * rate))).astype(np.float32)


def _truncated_wav(tmp_path):
    sf.write(tmp_path / "t.wav", _good(), 16000, subtype="PCM_16")
    data = (tmp_path / "t.wav").read_bytes()
    (tmp_path / "t.wav").write_bytes(data[: len(data) // 2])
    return tmp_path / "t.wav"


@pytest.mark.parametrize(
    ("bad", "kwargs", "message"),
    [
        (lambda tmp: (_good() * 32767).astype(np.int16), {}, "item 1: int16 samples; pass int16_scale=True"),
        (lambda tmp: _good(rate=44100), {"sample_rate": 44100}, "item 1: sample rate 44100 Hz, the model takes 16000 Hz"),
        (lambda tmp: np.where(np.arange(16000) == 5, np.nan, _good()).astype(np.float32), {}, "item 1: 1 NaN or infinite"),
        (lambda tmp: _good(0.1), {}, r"item 1: 0.10 s long, outside \[0.3, 30\] s"),
        (lambda tmp: _good(2.0), {"max_seconds": 1.5}, r"item 1: 2.00 s long, outside \[0.3, 1.5\] s"),
        (lambda tmp: _good() * 3000, {}, r"item 1: float samples must lie in \[-1, 1\]"),
        (lambda tmp: np.stack([_good(), _good()]), {}, r"item 1: expected a mono waveform .* shape \(2, 16000\)"),
        (lambda tmp: _good().astype(np.int32), {}, "item 1: samples of dtype int32"),
        (_truncated_wav, {}, r"item 1 \(.*t.wav\): .*t.wav: truncated: the header promises 32000 data bytes"),
    ],
)
def test_api_refuses_bad_audio_naming_the_item(api, tmp_path, bad, kwargs, message):
    sf.write(tmp_path / "good.wav", _good(), 16000)  # item 0: a file carries its own rate
    with pytest.raises(BadInputAudio, match=message):
        api([tmp_path / "good.wav", bad(tmp_path)], **{"sample_rate": 16000, **kwargs})


def test_api_needs_the_rate_of_arrays(api):
    with pytest.raises(ValueError, match="item 0: give the arrays' sample_rate"):
        api(_good())


def test_api_converts_only_when_asked_and_flags_doubtful_audio(api):
    wave = _good()
    as_int16 = np.round(wave * 32768).astype(np.int16)
    assert api(as_int16, sample_rate=16000, int16_scale=True)[0].text == api(as_int16 / 32768.0, sample_rate=16000)[0].text
    resampled = api(_good(rate=22050), sample_rate=22050, resample=True)
    assert len(resampled) == 1
    clipped = np.clip(wave * 20, -1, 1)
    quiet = wave * 1e-3
    results = api([clipped, quiet, np.zeros(16000, np.float32)], sample_rate=16000)
    assert any(w.startswith("clipped: ") for w in results[0].warnings)
    assert any(w.startswith("very quiet: peak -") for w in results[1].warnings)
    assert "silent: every sample is zero" in results[2].warnings
    assert not any(w.startswith(("clipped", "very quiet", "silent")) for w in api(wave, sample_rate=16000)[0].warnings)
