#!/usr/bin/env python3
"""The mini recipe's stand-in for ChatGLM3-6B: a small GLM-shaped LLM in ChatGLM3's checkpoint format.

ChatGLM3-6B brings a tokenizer and a language model pretrained on Chinese text;
the stand-in brings the same at toy size, from the corpus' TRAIN split only:

- a sentencepiece model trained on the markup-free transcripts and the
  AISHELL-NER marked-up text, with ChatGLM3's id layout (``<unk>`` 0, ``<s>`` 1,
  ``</s>`` 2) and the task markers and markup brackets as single pieces;
- a GLM-shaped causal LM (RMSNorm, grouped-query attention with qkv bias, half
  rotary, SwiGLU, untied output layer) whose vocabulary is the pieces plus
  ChatGLM3's 9 special tokens, padded as ChatGLM3 pads its own;
- optionally a short causal-LM pretraining on the same text (the role
  ChatGLM3's pretraining plays: the LLM knows the language before it hears),
  budgeted in steps, so the result does not depend on the machine's speed.

It is written as THUDM/chatglm3-6b publishes its checkpoint (``config.json``
with ChatGLMConfig fields, ``pytorch_model-0000x-of-0000y.bin`` shards with
their index, ``tokenizer.model``), so the full recipe loads it unchanged.

Usage: make_tiny_llm.py --corpus CORPUS --out DIR --config conf/stand_ins.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import torch
import yaml
from transformers import GlmForCausalLM

from espnet2_ext.speechllm.chatglm3 import chatglm3_config_to_glm
from espnet2_ext.text.chatglm3_tokenizer import TASK_TOKENS, ChatGLM3Tokenizer, train_sentencepiece
from espnet2_ext.text.kaldi_text import read_kaldi_text, read_kaldi_text_lines
from espnet2_ext.text.ner_markup import BRACKETS, parse_markup
from espnet2_ext.upstream_formats import save_chatglm3_checkpoint, tiny_chatglm3_config

TRANSCRIPT = Path("data_aishell/transcript/aishell_transcript_v0.8.txt")
NER_TRANSCRIPT = "aishell_ner/aishell_ner_transcript.{split}.txt"
# Always single pieces: the task markers and AISHELL-NER's brackets.
USER_SYMBOLS: tuple[str, ...] = TASK_TOKENS + tuple(c for pair in BRACKETS.values() for c in pair)

log = logging.getLogger("make_tiny_llm")


@dataclass
class TokenizerShape:
    vocab_size: int = 1000  # a soft limit: a small corpus yields fewer pieces
    model_type: str = "unigram"


@dataclass
class LlmShape:
    """ChatGLM3-6B's architecture at toy size (6B: 4096 wide, 28 layers, 32 heads / 2 groups, ffn 13696)."""

    hidden: int = 192
    layers: int = 2
    heads: int = 4
    kv_groups: int = 2
    ffn: int = 512
    seq_length: int = 8192
    pad_vocab_to_multiple_of: int = 8
    shard_size_mb: float = 2.0  # small, so the stand-in is sharded as the real checkpoint is


@dataclass
class LmPretraining:
    """Causal-LM pretraining on the train text; ``max_steps: 0`` leaves the LLM random."""

    seed: int = 0
    threads: int = 2
    max_steps: int = 300  # the budget: steps, never minutes
    batch_size: int = 32
    lr: float = 1.0e-3
    warmup_steps: int = 50
    log_every: int = 50


@dataclass
class LlmStandIn:
    """The ``llm:`` section of conf/stand_ins.yaml."""

    tokenizer: TokenizerShape = field(default_factory=TokenizerShape)
    shape: LlmShape = field(default_factory=LlmShape)
    lm_pretrain: LmPretraining = field(default_factory=LmPretraining)


def dataclass_from_dict(cls: type, values: dict | None, where: str):
    """``cls(**values)``, recursing into dataclass-valued fields; unknown keys are an error naming ``where``."""
    values = values or {}
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {values!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        factory = known[name].default_factory
        nested = factory is not MISSING and is_dataclass(factory)
        kwargs[name] = dataclass_from_dict(factory, value, f"{where}.{name}") if nested else value
    return cls(**kwargs)


def load_config_section(path: Path, section: str, cls: type):
    """One top-level section of a YAML file as the dataclass ``cls``."""
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if section not in document:
        raise ValueError(f"{path}: no '{section}' section")
    return dataclass_from_dict(cls, document[section], f"{path}: {section}")


def step_schedule(num_batches: int, max_steps: int, gen: torch.Generator) -> Iterator[tuple[int, int]]:
    """``(epoch, batch index)`` for ``max_steps`` steps, the batches in a new random order each epoch."""
    step = epoch = 0
    while step < max_steps:
        epoch += 1
        for b in torch.randperm(num_batches, generator=gen).tolist():
            if step >= max_steps:
                return
            yield epoch, b
            step += 1


def read_split_text(corpus: Path, split: str) -> list[str]:
    """The split's sentences twice: markup-free (AISHELL-1 transcript, words joined) and marked up (AISHELL-NER)."""
    ner_file = corpus / NER_TRANSCRIPT.format(split=split)
    transcript = read_kaldi_text(corpus / TRANSCRIPT)
    plain, marked = [], []
    for line in read_kaldi_text_lines(ner_file):
        if line.utt_id not in transcript:
            raise ValueError(f"{ner_file}:{line.line_no}: utterance {line.utt_id} is not in {corpus / TRANSCRIPT}")
        words = "".join(transcript[line.utt_id].split())
        parsed = parse_markup(line.text, path=str(ner_file), line=line.line_no, utt_id=line.utt_id)
        if parsed.plain != words:
            raise ValueError(
                f"{ner_file}:{line.line_no}: utterance {line.utt_id}: text without markup {parsed.plain!r} "
                f"differs from the AISHELL-1 transcript {words!r}"
            )
        plain.append(words)
        marked.append(line.text)
    if not plain:
        raise ValueError(f"{ner_file}: no utterances")
    return plain + marked


def make_tokenizer(sentences: list[str], cfg: TokenizerShape, workdir: Path) -> Path:
    text_file = workdir / "train_text.txt"
    text_file.write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
    return train_sentencepiece(text_file, workdir / "tokenizer", cfg.vocab_size, USER_SYMBOLS, 1.0, cfg.model_type)


def padded_vocab_size(tokenizer: ChatGLM3Tokenizer, multiple: int) -> int:
    return math.ceil(tokenizer.vocab_size / multiple) * multiple


def batches_of(ids: list[list[int]], batch_size: int, order: list[int]) -> list[tuple[torch.Tensor, ...]]:
    """Right-padded (input_ids, attention_mask, labels) batches; padding is ignored by the loss (-100)."""
    out = []
    for start in range(0, len(order), batch_size):
        seqs = [torch.tensor(ids[i]) for i in order[start : start + batch_size]]
        input_ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=0)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(s) for s in seqs], batch_first=True)
        out.append((input_ids, mask, input_ids.masked_fill(mask == 0, -100)))
    return out


def mean_loss(model: GlmForCausalLM, ids: list[list[int]], batch_size: int) -> float:
    """Token-weighted mean next-token loss (nats)."""
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for input_ids, mask, labels in batches_of(ids, batch_size, list(range(len(ids)))):
            n = int((labels[:, 1:] != -100).sum())
            total += model(input_ids=input_ids, attention_mask=mask, labels=labels).loss.item() * n
            tokens += n
    return total / tokens


def lm_pretrain(model: GlmForCausalLM, train: list[list[int]], dev: list[list[int]], cfg: LmPretraining) -> dict:
    """``max_steps`` of next-token training on ``[gMASK] sop text </s>`` sequences; returns the losses."""
    report = {"dev_loss_before": round(mean_loss(model, dev, cfg.batch_size), 4)}
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup_steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = batches_of(train, cfg.batch_size, torch.randperm(len(train), generator=gen).tolist())
    step = epoch = 0
    model.train()
    for epoch, b in step_schedule(len(batches), cfg.max_steps, gen):
        input_ids, mask, labels = batches[b]
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        warmup.step()
        step += 1
        if step % cfg.log_every == 0:
            log.info("LM epoch %d step %d: loss %.3f", epoch, step, loss.item())
    report.update(steps=step, epochs=epoch, dev_loss_after=round(mean_loss(model, dev, cfg.batch_size), 4))
    return report


def make_tiny_llm(corpus: Path, out: Path, cfg: LlmStandIn) -> tuple[GlmForCausalLM, dict]:
    """Train the tokenizer, build (and optionally pretrain) the LLM, save in ChatGLM3's format."""
    torch.set_num_threads(cfg.lm_pretrain.threads)
    random.seed(cfg.lm_pretrain.seed)
    torch.manual_seed(cfg.lm_pretrain.seed)
    train_text = read_split_text(corpus, "train")
    dev_text = read_split_text(corpus, "dev")
    with tempfile.TemporaryDirectory() as workdir:
        sp_model = make_tokenizer(train_text, cfg.tokenizer, Path(workdir))
        tokenizer = ChatGLM3Tokenizer(sp_model)
        shape = cfg.shape
        chatglm_cfg = tiny_chatglm3_config(
            vocab_size=padded_vocab_size(tokenizer, shape.pad_vocab_to_multiple_of),
            hidden=shape.hidden,
            layers=shape.layers,
            heads=shape.heads,
            kv_groups=shape.kv_groups,
            ffn=shape.ffn,
            seq_length=shape.seq_length,
        )
        model = GlmForCausalLM(chatglm3_config_to_glm(chatglm_cfg))
        params = sum(p.numel() for p in model.parameters())
        log.info(
            "tokenizer: %d pieces + %d specials (padded vocabulary %d); LLM: %d layers x %d, %.2fM parameters",
            tokenizer.sp.vocab_size(), tokenizer.vocab_size - tokenizer.sp.vocab_size(),
            chatglm_cfg["padded_vocab_size"], shape.layers, shape.hidden, params / 1e6,
        )  # fmt: skip
        encode = lambda text: tokenizer.encode(text, add_prefix=True) + [tokenizer.eos_id]  # noqa: E731
        lm_report = lm_pretrain(model, [encode(s) for s in train_text], [encode(s) for s in dev_text], cfg.lm_pretrain)
        log.info("LM pretraining: %s", lm_report)
        save_chatglm3_checkpoint(
            model.eval(), chatglm_cfg, out, shard_size=int(shape.shard_size_mb * 2**20), tokenizer_model=sp_model
        )
    report = {
        "sentencepiece_pieces": tokenizer.sp.vocab_size(),
        "padded_vocab_size": chatglm_cfg["padded_vocab_size"],
        "parameters": params,
        "lm_pretrain": lm_report,
        "config": asdict(cfg),
    }
    (out / "llm_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return model, report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="root holding data_aishell/ and aishell_ner/")
    parser.add_argument("--out", type=Path, required=True, help="output ChatGLM3-format directory")
    parser.add_argument("--config", type=Path, required=True, help="YAML with an 'llm' section")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s", stream=sys.stdout
    )
    return make_tiny_llm(args.corpus, args.out, load_config_section(args.config, "llm", LlmStandIn))[1]


if __name__ == "__main__":
    main()
