"""Speech2TextNER from a packed dir on raw audio (waveform and wav file) == the CLI engine on dumped encoder outputs."""

import json

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from test_inference_cli import train_tiny_experiment

from espnet2_ext.api import Request, Speech2TextNER
from espnet2_ext.bin.dump_feats import main as dump_feats
from espnet2_ext.bin.pack_model import pack
from espnet2_ext.speechllm.decoding import DecodingOptions
from espnet2_ext.text.ner_markup import parse_markup
from espnet2_ext.upstream_formats import save_whisper_hf, tiny_whisper_config

OPTIONS = DecodingOptions(maxlen_const=6, maxlenratio=0.2)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    experiment = train_tiny_experiment(tmp, "--llm_finetune", "lora", "--lora_conf", "r=2")
    out = pack(experiment["exp"], "valid.acc.ave.pth", tmp / "packed")
    whisper = tmp / "whisper"
    save_whisper_hf(tiny_whisper_config(n_mels=80, d_model=8), whisper)  # 8 = the tiny model's encoder width
    return experiment, out, whisper


def test_pack_holds_only_trained_parts(packed):
    experiment, out, _ = packed
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.yaml", "meta.json", "model.pth", "tokenizer.model"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["llm_conf"]["path"].startswith("PLACEHOLDER") and config["tokenizer_file"] == "tokenizer.model"
    assert "train_data_path_and_name_and_type" not in config
    state = torch.load(out / "model.pth", weights_only=True)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["packed_parameters"] == sum(v.numel() for v in state.values())
    assert meta["packed_parameters"] == meta["parameters"]["all"]["trainable"] < meta["parameters"]["all"]["total"]


def test_pack_refuses_frozen_weights(packed, tmp_path):
    experiment, _, _ = packed
    state = torch.load(experiment["exp"] / "valid.acc.ave.pth", weights_only=True)
    state["encoder.frozen_weight"] = torch.zeros(1)
    model_dir = tmp_path / "bad"
    model_dir.mkdir()
    (model_dir / "config.yaml").write_text((experiment["exp"] / "config.yaml").read_text())
    torch.save(state, model_dir / "bad.pth")
    with pytest.raises(ValueError, match="refusing to pack"):
        pack(model_dir, "bad.pth", tmp_path / "out")


@pytest.mark.parametrize("pad_to_30s", [False, True])
def test_audio_api_matches_decoding_dumped_encoder_outputs(packed, tmp_path, pad_to_30s):
    experiment, out, whisper = packed
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(16000 + 3000 * i).astype(np.float32) for i in range(3)]
    for i, wave in enumerate(waves):
        sf.write(tmp_path / f"u{i}.wav", wave, 16000, subtype="FLOAT")
    (tmp_path / "wav.scp").write_text("".join(f"u{i} {tmp_path}/u{i}.wav\n" for i in range(3)))
    dump_feats(["--wav_scp", str(tmp_path / "wav.scp"), "--out_dir", str(tmp_path / "dump"),
                "--encoder_out", "--whisper", str(whisper), "--pad_to_30s", str(pad_to_30s).lower()])
    feats = kaldiio.load_scp(str(tmp_path / "dump/feats.scp"))

    exp = experiment["exp"]
    cli = Speech2TextNER.from_config(exp / "config.yaml", exp / "valid.acc.ave.pth",
                                     llm_conf={"path": str(experiment["llm"])}, options=OPTIONS)
    expected = cli.decode_requests([Request(f"u{i}", feats[f"u{i}"]) for i in range(3)], "ner")

    api = Speech2TextNER.from_pretrained(out, whisper=whisper, llm=experiment["llm"], pad_to_30s=pad_to_30s,
                                         options=OPTIONS, batch_size=2)
    from_files = api([tmp_path / f"u{i}.wav" for i in range(3)])
    from_arrays = api(waves)
    assert [r.text for r in from_files] == [r.text for r in from_arrays] == [d.text for d in expected]
    assert [r.plain for r in from_files] == [d.plain for d in expected]
    assert api(waves[0])[0].entities == parse_markup(expected[0].text).entities
    with pytest.raises(ValueError, match="file not found"):
        api(str(tmp_path / "missing.wav"))
