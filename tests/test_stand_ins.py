"""The mini recipe's stand-in LLM (a tiny ChatGLM3-format GLM) and its frozen Whisper (the real Whisper-base).

A tiny AISHELL-layout corpus is synthesised with espeak-ng; the LLM maker runs on it
at toy size and its output must load through the full recipe's loaders.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from espnet2_ext.speechllm.chatglm3 import load_chatglm3
from espnet2_ext.text.chatglm3_tokenizer import TASK_TOKENS, ChatGLM3Tokenizer

RECIPE = Path(__file__).resolve().parents[1] / "egs" / "mini_aishell_ner" / "llm1"
LOCAL = RECIPE / "local"
sys.path.insert(0, str(LOCAL))

import make_tiny_llm  # noqa: E402

WHISPER_BASE_WIDTH = 512  # d_model of OpenAI's Whisper base (FACTS.md)

# (split, speaker, utterance id, words, marked-up text)
SENTENCES = (
    ("train", "S0002", "BAC009S0002W0001", "张伟 明天 要 去 北京 出差", "[张伟]明天要去(北京)出差"),
    ("train", "S0002", "BAC009S0002W0002", "清华大学 发布 了 新 的 报告", "<清华大学>发布了新的报告"),
    ("train", "S0003", "BAC009S0003W0001", "王芳 说 她 很 喜欢 上海", "[王芳]说她很喜欢(上海)"),
    ("train", "S0003", "BAC009S0003W0002", "我们 明天 一起 去 吃饭 吧", "我们明天一起去吃饭吧"),
    ("dev", "S0724", "BAC009S0724W0001", "王芳 明天 要 去 上海 出差", "[王芳]明天要去(上海)出差"),
    ("dev", "S0724", "BAC009S0724W0002", "张伟 很 喜欢 北京", "[张伟]很喜欢(北京)"),
)

TINY = {
    "llm": {
        "tokenizer": {"vocab_size": 60},
        "shape": {"hidden": 16, "layers": 2, "heads": 4, "kv_groups": 2, "ffn": 32, "shard_size_mb": 0.004},
        "lm_pretrain": {"max_steps": 6, "batch_size": 4, "log_every": 1},
    },
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are needed to synthesise the test corpus")
    root = tmp_path_factory.mktemp("corpus")
    transcript = root / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"
    transcript.parent.mkdir(parents=True)
    transcript.write_text("".join(f"{utt} {words}\n" for _, _, utt, words, _ in SENTENCES), encoding="utf-8")
    (root / "aishell_ner").mkdir()
    for split in ("train", "dev"):
        lines = "".join(f"{utt} {marked}\n" for s, _, utt, _, marked in SENTENCES if s == split)
        (root / "aishell_ner" / f"aishell_ner_transcript.{split}.txt").write_text(lines, encoding="utf-8")
    for split, speaker, utt, words, _ in SENTENCES:
        wav = root / "data_aishell" / "wav" / split / speaker / f"{utt}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        raw = wav.with_suffix(".22k.wav")
        subprocess.run(["espeak-ng", "-v", "cmn-latn-pinyin", "-w", str(raw), "".join(words.split())], check=True)
        subprocess.run(["sox", "-D", "-V1", str(raw), "-r", "16000", "-b", "16", "-c", "1", str(wav)], check=True)
        raw.unlink()
    return root


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("conf") / "stand_ins.yaml"
    path.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    return path


def test_recipe_config_is_complete() -> None:
    """The recipe's YAML is the LLM's alone, names every field (no hidden defaults) and no time budget."""
    conf = RECIPE / "conf" / "stand_ins.yaml"
    document = yaml.safe_load(conf.read_text(encoding="utf-8"))
    assert set(document) == {"llm"}
    llm = make_tiny_llm.load_config_section(conf, "llm", make_tiny_llm.LlmStandIn)
    for part in ("tokenizer", "shape", "lm_pretrain"):
        assert set(document["llm"][part]) == set(vars(getattr(llm, part)))
    assert not [key for key in vars(llm.lm_pretrain) if "minute" in key or "second" in key]


def test_unknown_config_key_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"llm": {"lm_pretrain": {"max_minutes": 1.0}}}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.yaml: llm.lm_pretrain: unknown keys \['max_minutes'\]"):
        make_tiny_llm.load_config_section(bad, "llm", make_tiny_llm.LlmStandIn)


def test_step_schedule_counts_steps_and_reshuffles() -> None:
    """The budget is a number of steps, whatever the machine's speed; each epoch has its own order."""
    schedule = list(make_tiny_llm.step_schedule(4, 10, torch.Generator().manual_seed(0)))
    assert len(schedule) == 10 and [epoch for epoch, _ in schedule] == [1] * 4 + [2] * 4 + [3] * 2
    assert sorted(b for _, b in schedule[:4]) == sorted(b for _, b in schedule[4:8]) == [0, 1, 2, 3]
    assert schedule == list(make_tiny_llm.step_schedule(4, 10, torch.Generator().manual_seed(0)))


def test_recipe_hears_through_whisper_base() -> None:
    """The mini recipe's frozen encoder is the installed Whisper-base, and every LLM config has its width."""
    run_sh = (RECIPE / "run.sh").read_text(encoding="utf-8")
    assert "tools/models/whisper-base" in run_sh and "stand_ins/whisper" not in run_sh
    configs = sorted((RECIPE / "conf").glob("train_*_phase[123].yaml"))
    assert len(configs) == 6
    for config in configs:
        document = yaml.safe_load(config.read_text(encoding="utf-8"))
        assert document["encoder"] == "precomputed", config
        assert document["encoder_conf"]["output_size"] == WHISPER_BASE_WIDTH, config
    installed = RECIPE.parents[2] / "tools" / "models" / "whisper-base" / "config.json"
    if installed.is_file():
        assert json.loads(installed.read_text(encoding="utf-8"))["d_model"] == WHISPER_BASE_WIDTH


def test_tiny_llm_loads_with_the_recipe_loaders(corpus: Path, config: Path, tmp_path: Path) -> None:
    cfg = make_tiny_llm.load_config_section(config, "llm", make_tiny_llm.LlmStandIn)
    out = tmp_path / "chatglm3"
    trained, report = make_tiny_llm.make_tiny_llm(corpus, out, cfg)
    # ChatGLM3's upstream layout: config.json, shards with their index, tokenizer.model.
    assert json.loads((out / "config.json").read_text())["model_type"] == "chatglm"
    assert (out / "pytorch_model.bin.index.json").is_file()
    assert len(list(out.glob("pytorch_model-0000?-of-0000?.bin"))) > 1

    tokenizer = ChatGLM3Tokenizer(out / "tokenizer.model")
    pieces = tokenizer.sp.vocab_size()
    assert [tokenizer.sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    for symbol in (*TASK_TOKENS, "[", "]", "(", ")", "<", ">"):
        assert tokenizer.sp.encode(symbol, out_type=str) == [symbol], symbol
    text = "[王芳]明天要去(北京)出差|sep|"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert report["padded_vocab_size"] % 8 == 0 and report["padded_vocab_size"] >= pieces + 9
    assert report["lm_pretrain"]["steps"] > 0
    assert report["lm_pretrain"]["dev_loss_after"] < report["lm_pretrain"]["dev_loss_before"]

    model = load_chatglm3(out)
    assert model.config.vocab_size == report["padded_vocab_size"]
    ids = torch.tensor([tokenizer.encode(text, add_prefix=True)])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, trained(ids).logits, atol=1e-6)

    # Deterministic: a second run writes the same tokenizer and the same weights.
    again = tmp_path / "again"
    retrained, _ = make_tiny_llm.make_tiny_llm(corpus, again, cfg)
    pieces_of = lambda sp: [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.vocab_size())]  # noqa: E731
    assert pieces_of(ChatGLM3Tokenizer(again / "tokenizer.model").sp) == pieces_of(tokenizer.sp)
    for name, tensor in trained.state_dict().items():
        assert torch.equal(retrained.state_dict()[name], tensor), name


def test_llm_text_must_agree_with_the_transcript(corpus: Path, tmp_path: Path) -> None:
    broken = tmp_path / "corpus"
    shutil.copytree(corpus, broken)
    ner = broken / "aishell_ner" / "aishell_ner_transcript.train.txt"
    ner.write_text(ner.read_text(encoding="utf-8").replace("[张伟]明天", "[张三]明天"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"train.txt:1: utterance BAC009S0002W0001: text without markup"):
        make_tiny_llm.read_split_text(broken, "train")
