"""ChatGLM3's tokenizer with plain sentencepiece (its remote code does not run on transformers 5).

ChatGLM3 = a sentencepiece model (``n = sp.vocab_size()`` pieces, 64,789 in the
real one; ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2) plus 9 special tokens numbered
from ``n``: ``[MASK] [gMASK] [sMASK] sop eop <|system|> <|user|> <|assistant|>
<|observation|>``. Prompts start with ``[gMASK] sop``; pad = 0, eos = 2.

Task markers (a decision): ``|asr|``, ``|sep|`` and ``|ner|`` are PLAIN TEXT,
encoded by sentencepiece, not new special tokens. No embedding rows are added,
so the frozen LLM's embedding and output layer stay untouched and a packed
model holds only the connector and LoRA weights. With ChatGLM3's vocabulary
each marker is a few pieces; the mini recipe trains its sentencepiece model
with them as ``user_defined_symbols`` (see :func:`train_sentencepiece`), so
there they are single pieces.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

ASR_TOKEN = "|asr|"
SEP_TOKEN = "|sep|"
NER_TOKEN = "|ner|"
TASK_TOKENS: tuple[str, ...] = (ASR_TOKEN, SEP_TOKEN, NER_TOKEN)

SPECIAL_TOKENS: tuple[str, ...] = (
    "[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
)  # fmt: skip
PAD_ID = 0
EOS_ID = 2


class ChatGLM3Tokenizer:
    """Encode/decode as ChatGLM3 does; special tokens only via :attr:`special_ids`, never from text."""

    def __init__(self, model_file: str | Path) -> None:
        model_file = Path(model_file)
        if not model_file.is_file():
            raise FileNotFoundError(f"sentencepiece model not found: {model_file}")
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        n = self.sp.vocab_size()
        self.special_ids: dict[str, int] = {tok: n + i for i, tok in enumerate(SPECIAL_TOKENS)}

    @property
    def vocab_size(self) -> int:
        """Sentencepiece pieces plus the 9 special tokens."""
        return self.sp.vocab_size() + len(SPECIAL_TOKENS)

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def prefix_ids(self) -> list[int]:
        """``[gMASK] sop``, which starts every ChatGLM3 prompt."""
        return [self.special_ids["[gMASK]"], self.special_ids["sop"]]

    def encode(self, text: str, add_prefix: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return self.prefix_ids + ids if add_prefix else ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens split the sequence and are dropped."""
        n = self.sp.vocab_size()
        out_of_range = [i for i in ids if not 0 <= i < self.vocab_size]
        if out_of_range:
            raise ValueError(f"token ids {out_of_range[:10]} outside the vocabulary [0, {self.vocab_size})")
        pieces: list[str] = []
        run: list[int] = []
        for i in list(ids) + [n]:
            if i < n:
                run.append(int(i))
            elif run:
                pieces.append(self.sp.decode(run))
                run = []
        return "".join(pieces)


def train_sentencepiece(
    text_file: str | Path,
    model_prefix: str | Path,
    vocab_size: int,
    user_defined_symbols: Sequence[str],
    character_coverage: float = 1.0,
    model_type: str = "unigram",
) -> Path:
    """Train a ChatGLM3-layout sentencepiece model (unk 0, bos 1, eos 2, no pad) for the mini recipe.

    ``user_defined_symbols`` (the markup characters and :data:`TASK_TOKENS`) are always single
    pieces. No byte fallback and no dummy prefix: Chinese text has no spaces to mark. The
    vocabulary size is a soft limit, so a small corpus yields fewer pieces instead of failing.
    Returns the ``.model`` path.
    """
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=str(text_file),
        model_prefix=str(model_prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        user_defined_symbols=list(user_defined_symbols),
        byte_fallback=False,
        add_dummy_prefix=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=1,
    )
    return model_prefix.with_name(model_prefix.name + ".model")
