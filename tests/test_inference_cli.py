"""speechllm_inference end to end on a tiny ESPnet experiment: outputs, long-form on its own history, repairs."""

from pathlib import Path

import pytest
from helpers_tiny import TEXTS, train_tiny_experiment

from espnet2_ext.api import Speech2TextNER, schedule
from espnet2_ext.bin.speechllm_inference import main as infer
from espnet2_ext.speechllm.decoding import Hypothesis


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    return train_tiny_experiment(tmp_path_factory.mktemp("exp"))


def _read(path: Path) -> dict[str, str]:
    return dict((line.split(" ", 1) + [""])[:2] for line in path.read_text(encoding="utf-8").splitlines())


def _run(experiment, out: Path, *extra: str) -> None:
    data = experiment["data"]
    keys = out.parent / "keys"
    keys.write_text("".join(f"{u}\n" for u in TEXTS))
    infer([
        "--model_dir", str(experiment["exp"]), "--model_file", "valid.acc.ave.pth",
        "--llm_conf", f"path={experiment['llm']}",
        "--data_path_and_name_and_type", f"{data['feats.scp']},speech,kaldi_ark",
        "--history_file", str(data["history"]), "--key_file", str(keys),
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
