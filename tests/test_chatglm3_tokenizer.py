"""ChatGLM3's tokenizer layout on a tiny sentencepiece model trained here."""

from __future__ import annotations

import pytest

from espnet2_ext.text.chatglm3_tokenizer import (
    ASR_TOKEN,
    NER_TOKEN,
    SEP_TOKEN,
    SPECIAL_TOKENS,
    TASK_TOKENS,
    ChatGLM3Tokenizer,
    train_sentencepiece,
)

SENTENCES = [
    "[张三]在(北京)的<清华大学>工作",
    "今天(上海)天气很好",
    "<中国银行>发布了新的报告",
    "[李四]和[王五]去了(广州)",
    "我们在(深圳)开会讨论经济问题",
]
MARKUP = ["[", "]", "(", ")", "<", ">"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("sp")
    corpus = root / "text.txt"
    corpus.write_text("\n".join(SENTENCES * 20) + "\n", encoding="utf-8")
    model = train_sentencepiece(corpus, root / "sub" / "bpe", 80, user_defined_symbols=MARKUP + list(TASK_TOKENS))
    assert model == root / "sub" / "bpe.model"
    return ChatGLM3Tokenizer(model)


def test_chatglm3_id_layout(tokenizer):
    sp = tokenizer.sp
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    n = sp.vocab_size()
    assert tokenizer.special_ids == {tok: n + i for i, tok in enumerate(SPECIAL_TOKENS)}
    assert tokenizer.vocab_size == n + 9
    assert tokenizer.prefix_ids == [n + 1, n + 3]  # [gMASK] sop
    assert (tokenizer.pad_id, tokenizer.eos_id) == (0, 2)


def test_task_markers_and_markup_are_single_pieces(tokenizer):
    for symbol in MARKUP + [ASR_TOKEN, SEP_TOKEN, NER_TOKEN]:
        assert len(tokenizer.encode(symbol)) == 1, symbol
    assert tokenizer.sp.id_to_piece(tokenizer.encode("今天")[0]) != "▁"  # no dummy prefix


def test_round_trip_and_prefix(tokenizer):
    text = f"今天天气很好{SEP_TOKEN}[张三]在(北京){NER_TOKEN}"
    ids = tokenizer.encode(text, add_prefix=True)
    assert ids[:2] == tokenizer.prefix_ids
    assert tokenizer.encode(text) == ids[2:]
    assert tokenizer.decode(ids) == text


def test_decode_splits_at_special_ids(tokenizer):
    ids = tokenizer.encode("今天") + [tokenizer.special_ids["<|assistant|>"]] + tokenizer.encode("开会")
    assert tokenizer.decode(ids) == "今天开会"
    assert max(tokenizer.encode("<|user|>sop")) < tokenizer.sp.vocab_size()  # role names in text stay text


def test_unknown_ids_are_refused(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([tokenizer.vocab_size])
    with pytest.raises(FileNotFoundError, match="missing.model"):
        ChatGLM3Tokenizer(tmp_path / "missing.model")
