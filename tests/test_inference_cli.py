"""speechllm_inference end to end on a tiny ESPnet experiment: outputs, long-form on its own history, repairs;
float16 features, length-sorted batches, progress lines, and the input and device checks."""

import logging
import re
from pathlib import Path

import kaldiio
import pytest
import torch
from helpers_tiny import TEXTS, train_tiny_experiment

from espnet2_ext.api import Speech2TextNER, schedule
from espnet2_ext.bin.analyze_speechllm import main as analyze
from espnet2_ext.bin.speechllm_inference import main as infer
from espnet2_ext.feats_io import feature_writer
from espnet2_ext.speechllm.decoding import Hypothesis
from espnet2_ext.speechllm.input_settings import FeatureSettings, settings_file, write_feature_settings

TRAINED_ON = FeatureSettings("encoder_output", pad_to_30s=False, n_mels=80, dump_dtype="float32")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    experiment = train_tiny_experiment(tmp_path_factory.mktemp("exp"))
    write_feature_settings(settings_file(experiment["data"]["feats.scp"]), TRAINED_ON)  # as bin/dump_feats.py does
    return experiment


def _read(path: Path) -> dict[str, str]:
    return dict((line.split(" ", 1) + [""])[:2] for line in path.read_text(encoding="utf-8").splitlines())


def _run(experiment, out: Path, *extra: str, feats: Path | None = None, keys: list[str] = list(TEXTS)) -> None:
    data = experiment["data"]
    key_file = out.parent / f"keys.{out.name}"
    key_file.write_text("".join(f"{u}\n" for u in keys))
    infer([
        "--model_dir", str(experiment["exp"]), "--model_file", "valid.acc.ave.pth",
        "--llm_conf", f"path={experiment['llm']}",
        "--data_path_and_name_and_type", f"{feats or data['feats.scp']},speech,kaldi_ark",
        "--history_file", str(data["history"]), "--key_file", str(key_file),
        "--batch_size", "3", "--ngpu", "0", "--output_dir", str(out), "--maxlen_const", "12", *extra,
    ])


def test_long_form_ner_uses_its_own_previous_hypotheses(experiment, tmp_path):
    out = tmp_path / "ner"
    _run(experiment, out, "--task", "ner", "--history", "1")
    outputs = {name: _read(out / name) for name in ("text", "text.plain", "token_scores", "raw")}
    assert all(list(o) == list(TEXTS) for o in outputs.values())
    for uid, previous in (("spk1_u2", "spk1_u1"), ("spk2_u2", "spk2_u1")):
        assert outputs["raw"][uid].startswith(outputs["text.plain"][previous].strip() + "|sep|")
    for uid in ("spk1_u1", "spk2_u1"):
        assert outputs["raw"][uid].startswith("|sep|")
    for uid, scores in outputs["token_scores"].items():
        assert all(float(x) <= 0 for x in scores.split())
    assert (out / "malformed").is_file()


def test_history_that_does_not_fit_is_left_out_and_listed(experiment, tmp_path):
    """max_input_seconds 0.28 = 14 cached frames: spk1_u1 + spk1_u2 (5 + 6) fit, spk2_u1 + spk2_u2 (7 + 8) do not."""
    import shutil

    import yaml

    model_dir = tmp_path / "model"
    shutil.copytree(experiment["exp"], model_dir)
    config = yaml.safe_load((model_dir / "config.yaml").read_text(encoding="utf-8"))
    config["preprocessor_conf"]["max_input_seconds"] = 0.28
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    out = tmp_path / "cut"
    _run({**experiment, "exp": model_dir}, out, "--task", "asr", "--history", "1")
    assert (out / "history_cut").read_text() == "spk2_u2 0 of 1\n"


def test_short_form_asr_with_beam_search(experiment, tmp_path):
    out = tmp_path / "asr"
    _run(experiment, out, "--task", "asr", "--history", "0", "--beam_size", "2", "--length_penalty", "0.5")
    text, plain = _read(out / "text"), _read(out / "text.plain")
    assert list(text) == list(TEXTS) and text == plain
    assert all("|ner|" not in t for t in text.values())


def test_waves_batch_step_i_of_every_speaker():
    history = {"a1": [], "a2": ["a1"], "a3": ["a1", "a2"], "b1": [], "b2": ["b1"]}
    waves, needs = schedule(list(history), history, 2)
    assert waves == [["a1", "b1"], ["a2", "b2"], ["a3"]] and needs["a3"] == ["a1", "a2"]
    assert schedule(list(history), history, 0)[0] == [list(history)]
    # in any key order (e.g. sorted by length): a3 needs a1 and a2, a2 needs a1 again
    waves, _ = schedule(["a3", "b2", "a2", "b1", "a1"], history, 2)
    assert waves == [["b1", "a1"], ["b2", "a2"], ["a3"]]
    with pytest.raises(ValueError, match="circular"):
        schedule(["x", "y"], {"x": ["y"], "y": ["x"]}, 1)
    with pytest.raises(ValueError, match="a1.*not among the keys"):
        schedule(["a2", "a3"], history, 1)


def test_malformed_outputs_are_repaired_and_reported(experiment):
    exp, tokenizer = experiment["exp"], experiment["tokenizer"]
    engine = Speech2TextNER.from_config(exp / "config.yaml", exp / "valid.acc.ave.pth", llm_conf={"path": str(experiment["llm"])})

    def interpret(generated: str, end: str = "eos"):
        ids = tokenizer.encode(generated)
        return engine.interpret("u1", "cot_ner", "甲|sep|", Hypothesis(ids, [-0.1] * len(ids), end=end))

    good = interpret("他在读书|ner|[他]在读书")
    assert (good.text, good.plain, good.problems) == ("[他]在读书", "他在读书", [])
    unclosed = interpret("他在读书|ner|[他在读书")
    assert unclosed.text == "他在读书" and any("invalid markup" in p for p in unclosed.problems)
    no_answer = interpret("他在读书", end="max_length")
    assert no_answer.text == "他在读书" and len(no_answer.problems) == 2
    assert interpret("他在读书|ner|[他]在读书", end="repetition").problems == ["repetition loop cut"]


def _dump(experiment, directory: Path, dtype: str, settings: FeatureSettings = TRAINED_ON) -> Path:
    """The tiny set's features stored as ``dtype``, recorded as ``bin/dump_feats.py`` records them."""
    feats = kaldiio.load_scp(str(experiment["data"]["feats.scp"]))
    directory.mkdir()
    with feature_writer(directory / "feats.ark", directory / "feats.scp", dtype) as writer:
        for uid in TEXTS:
            writer(uid, feats[uid].astype(dtype))
    write_feature_settings(directory / "feats_conf.json", FeatureSettings(**{**settings.__dict__, "dump_dtype": dtype}))
    return directory / "feats.scp"


def test_float16_features_decode_to_the_float32_tokens(experiment, tmp_path):
    outputs = {}
    for dtype in ("float32", "float16"):
        feats = _dump(experiment, tmp_path / f"dump_{dtype}", dtype)
        _run(experiment, tmp_path / dtype, "--task", "ner", "--history", "1", feats=feats)
        outputs[dtype] = {name: _read(tmp_path / dtype / name) for name in ("raw", "token_scores")}
    assert outputs["float16"]["raw"] == outputs["float32"]["raw"]
    for uid, scores in outputs["float32"]["token_scores"].items():
        half = [float(x) for x in outputs["float16"]["token_scores"][uid].split()]
        assert len(half) == len(scores.split())  # as many tokens (and the same text, above)
        assert all(abs(a - b) < 1e-2 for a, b in zip(half, map(float, scores.split())))


def test_length_sorted_batches_keep_the_key_order_and_the_text(experiment, tmp_path, caplog):
    shuffled = ["spk2_u2", "spk1_u1", "spk2_u1", "spk1_u2"]
    _run(experiment, tmp_path / "one", "--task", "asr", "--history", "0", "--batch_size", "1", keys=shuffled)
    with caplog.at_level(logging.INFO):
        _run(experiment, tmp_path / "all", "--task", "asr", "--history", "0", "--batch_size", "4", "--log_every", "2",
             keys=shuffled)
    for name in ("text", "raw", "token_scores"):
        one, batched = _read(tmp_path / "one" / name), _read(tmp_path / "all" / name)
        assert list(batched) == shuffled and batched.keys() == one.keys()
        if name != "token_scores":
            assert batched == one
    lines = [r.getMessage() for r in caplog.records if "utt/s" in r.getMessage()]
    last = r"decoding \(asr, history 0\): 4/4 utt \(100.0%\), \d+\.\d+ utt/s, elapsed .*, ETA 0:00:00"
    assert lines and re.fullmatch(last, lines[-1])


def test_features_made_otherwise_than_the_training_features_are_refused(experiment, tmp_path):
    padded = _dump(experiment, tmp_path / "padded", "float16", FeatureSettings("encoder_output", True, 80))
    with pytest.raises(ValueError, match=r"padded/feats_conf.json: these features were made otherwise .*"
                       r"pad_to_30s True here, False in training; dump them again"):
        _run(experiment, tmp_path / "a", "--task", "asr", feats=padded)
    mel = _dump(experiment, tmp_path / "mel", "float16", FeatureSettings("mel", False, 80))
    with pytest.raises(ValueError, match=r"input_type mel here, encoder_output in training"):
        _run(experiment, tmp_path / "b", "--task", "asr", feats=mel)


def test_a_gpu_job_without_a_gpu_is_an_error(experiment, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"--ngpu 1 asks for a GPU, but torch sees none \(CUDA_VISIBLE_DEVICES"):
        _run(experiment, tmp_path / "gpu", "--task", "asr", "--ngpu", "1")
    with pytest.raises(ValueError, match=r"--ngpu 1 asks for a GPU, but torch sees none"):  # stage 9's analysis
        analyze(["--model_dir", str(experiment["exp"]), "--out", str(tmp_path / "ana"), "--ngpu", "1"])


@pytest.fixture(scope="module")
def lora_experiment(tmp_path_factory):
    return train_tiny_experiment(tmp_path_factory.mktemp("lora"), "--llm_finetune", "lora", "--lora_conf", "r=2")


def test_merging_lora_changes_nothing(lora_experiment, tmp_path):
    for merge in ("true", "false"):
        _run(lora_experiment, tmp_path / merge, "--task", "ner", "--history", "1", "--merge_lora", merge)
    assert _read(tmp_path / "true" / "raw") == _read(tmp_path / "false" / "raw")


def test_bfloat16_engine_holds_the_merged_llm_in_bfloat16(lora_experiment):
    exp = lora_experiment["exp"]
    engine = Speech2TextNER.from_config(exp / "config.yaml", exp / "valid.acc.ave.pth",
                                        llm_conf={"path": str(lora_experiment["llm"])}, dtype="bfloat16")
    params = dict(engine.model.named_parameters())
    assert not any("lora_" in name for name in params)
    assert {p.dtype for name, p in params.items() if name.startswith(("llm.", "connector."))} == {torch.bfloat16}
    assert engine.model.llm.model.rotary_emb.inv_freq.dtype == torch.float32  # positions stay exact
    feats = kaldiio.load_scp(str(lora_experiment["data"]["feats.scp"]))
    decoded = engine.decode_long_form(feats, list(TEXTS), {}, 0, "asr")
    assert sorted(decoded) == sorted(TEXTS)


def test_static_cache_decodes_the_same_text(lora_experiment, tmp_path):
    """The fast path (--cache static, CUDA-graph option falling back to eager on CPU) is a speed choice only."""
    _run(lora_experiment, tmp_path / "dynamic", "--task", "ner", "--history", "1")
    _run(lora_experiment, tmp_path / "static", "--task", "ner", "--history", "1", "--cache", "static",
         "--compile", "cudagraph", "--sync_every", "3", "--cache_chunk", "8")
    assert _read(tmp_path / "static" / "raw") == _read(tmp_path / "dynamic" / "raw")
