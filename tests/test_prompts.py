"""Table-1 target texts and the tolerant parsing of decoded outputs."""

import pytest

from espnet2_ext.speechllm.prompts import build_target_text, parse_output


def test_short_form_concatenates_plain_transcripts():
    assert build_target_text("short_asr", ["[张三]来了"], "去(北京)") == "张三来了去北京"


def test_long_form_puts_sep_before_current():
    assert build_target_text("long_asr", ["a(b)", "c"], "<d>e") == "abc|sep|de"
    assert build_target_text("long_asr", [], "x") == "|sep|x"


def test_cot_ner_appends_markup_of_current_only():
    assert build_target_text("cot_ner", ["[张三]"], "去(北京)") == "张三|sep|去北京|ner|去(北京)"


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="unknown task"):
        build_target_text("translate", [], "x")


@pytest.mark.parametrize("task", ["short_asr", "long_asr", "cot_ner"])
def test_parse_inverts_build(task):
    text = build_target_text(task, ["[张三]来了"], "去(北京)")
    history, plain, markup = parse_output(task, text)
    assert plain == ("张三来了去北京" if task == "short_asr" else "去北京")
    assert history == ("" if task == "short_asr" else "张三来了")
    assert markup == ("去(北京)" if task == "cot_ner" else plain)


def test_malformed_outputs_are_repaired_not_raised(caplog):
    assert parse_output("cot_ner", "abc") == ("", "abc", "abc")
    assert parse_output("long_asr", "a|sep|b|sep|c") == ("a|sep|b".replace("|sep|", ""), "c", "c")
    assert parse_output("cot_ner", "a|sep|b|ner|(b|asr|") == ("a", "b", "(b")
    assert "malformed" in caplog.text


# --------------------------------------------------------------------------- the preprocessor
import kaldiio  # noqa: E402
from helpers_tiny import TEXTS, make_tokenizer, write_dataset  # noqa: E402

from espnet2_ext.speechllm.preprocessor import SpeechLLMPreprocessor  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pre")
    tokenizer = make_tokenizer(directory)
    paths = write_dataset(directory / "data")
    return tokenizer, str(directory / "spm.model"), paths, kaldiio.load_scp(str(paths["feats.scp"]))


def _pre(data, train, **conf):
    _, spm, paths, _ = data
    return SpeechLLMPreprocessor(train=train, tokenizer_file=spm, feats_scp=str(paths["feats.scp"]),
                                 text_file=str(paths["text"]), history_file=str(paths["history"]), **conf)


def test_eval_cot_ner_example_layout(data):
    tokenizer, _, _, feats = data
    out = _pre(data, False, eval_task="cot_ner", eval_history=3)("spk1_u2", {"speech": feats["spk1_u2"],
                                                                           "text": TEXTS["spk1_u2"]})
    assert out["speech_segments"].tolist() == [feats["spk1_u1"].shape[0], feats["spk1_u2"].shape[0]]
    assert out["num_history"].tolist() == [1]
    assert (out["speech"][: len(feats["spk1_u1"])] == feats["spk1_u1"]).all()
    assert out["prompt"].tolist() == tokenizer.encode("|asr|")
    want = build_target_text("cot_ner", [TEXTS["spk1_u1"]], TEXTS["spk1_u2"])
    assert out["text"].tolist() == tokenizer.encode(want) + [tokenizer.eos_id]


def test_history_that_does_not_fit_is_left_out_whole(data):
    _, _, _, feats = data
    limit = feats["spk1_u2"].shape[0] + feats["spk1_u1"].shape[0] - 1
    out = _pre(data, False, eval_task="long_asr", eval_history=1, max_input_seconds=limit / 100, frames_per_second=100)(
        "spk1_u2", {"speech": feats["spk1_u2"], "text": TEXTS["spk1_u2"]})
    assert out["num_history"].tolist() == [0] and len(out["speech_segments"]) == 1


def test_training_draws_are_reproducible_per_epoch(data):
    _, _, _, feats = data
    pre = _pre(data, True, tasks={"short_asr": 1.0}, max_concat=4)
    draw = lambda: [pre(u, {"speech": feats[u], "text": t})["speech_segments"].tolist() for u, t in TEXTS.items()]
    first = draw()
    assert draw() == first
    pre.set_epoch(1)
    assert any(len(s) > 1 for s in first + draw())


def test_overlong_current_utterance_is_an_error(data):
    _, _, _, feats = data
    with pytest.raises(ValueError, match="spk2_u2.*max_input_seconds=0.06 .3 frames"):
        _pre(data, False, max_input_seconds=0.06)("spk2_u2", {"speech": feats["spk2_u2"], "text": TEXTS["spk2_u2"]})


def test_limit_counts_seconds_in_the_input_frame_rate(data):
    """The same 30 s are 1500 cached encoder frames and 3000 log-mel frames."""
    assert _pre(data, False).max_input_frames == 1500
    assert _pre(data, False, frames_per_second=100).max_input_frames == 3000
