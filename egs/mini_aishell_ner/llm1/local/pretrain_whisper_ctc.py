#!/usr/bin/env python3
"""The mini recipe's stand-in for Whisper-large-v2: a small Whisper-shaped encoder pretrained with CTC.

The paper's LLM hears through a frozen, pretrained Whisper encoder. A frozen
random encoder gives a tiny LLM nothing to learn from, and training the encoder
jointly on a few thousand CPU steps does not get there either; a small encoder
pretrained with CTC on the corpus' train split does (FACTS.md). This script
plays Whisper's pretraining: it trains our variable-length ``WhisperEncoder``
subclass (conv1 stride 1, conv2 stride 2, so 50 Hz outputs, exactly Whisper's
shape) plus a linear CTC head over the train set's characters, on Whisper
log-mel features, reports greedy CTC CER on dev, and saves the encoder (and a
minimal decoder, which ``WhisperModel`` requires) with ``save_pretrained`` -- the
layout of openai/whisper-large-v2's Hugging Face repository -- so that the full
recipe's loaders read it with no special case. The CTC head is discarded, as
Whisper's decoder is in the paper.

Usage: pretrain_whisper_ctc.py --corpus CORPUS --out DIR --config conf/stand_ins.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import soundfile
import torch
import yaml
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel
from transformers.models.whisper.modeling_whisper import sinusoids

from espnet2_ext.scoring.alignment import align
from espnet2_ext.scoring.cer import ErrorCounts
from espnet2_ext.speechllm.frontend import SAMPLE_RATE, WhisperLogMel
from espnet2_ext.speechllm.whisper_encoder import FrozenWhisperEncoder, encoder_output_lengths
from espnet2_ext.text.kaldi_text import read_kaldi_text

TRANSCRIPT = Path("data_aishell/transcript/aishell_transcript_v0.8.txt")
WAV_DIR = Path("data_aishell/wav")
BLANK = "<blank>"

log = logging.getLogger("pretrain_whisper_ctc")


@dataclass
class EncoderShape:
    """The Whisper architecture fields; the decoder is minimal (``WhisperModel`` needs one, nobody uses it)."""

    num_mel_bins: int = 80
    d_model: int = 192
    encoder_layers: int = 2
    encoder_attention_heads: int = 4
    encoder_ffn_dim: int = 768
    max_source_positions: int = 1500
    decoder_layers: int = 1
    decoder_attention_heads: int = 1
    decoder_ffn_dim: int = 16
    decoder_vocab_size: int = 8
    max_target_positions: int = 8

    def whisper_config(self) -> WhisperConfig:
        """A WhisperConfig with every special token id below the (tiny) decoder vocabulary."""
        special = self.decoder_vocab_size - 1
        return WhisperConfig(
            vocab_size=self.decoder_vocab_size,
            num_mel_bins=self.num_mel_bins,
            d_model=self.d_model,
            encoder_layers=self.encoder_layers,
            encoder_attention_heads=self.encoder_attention_heads,
            encoder_ffn_dim=self.encoder_ffn_dim,
            decoder_layers=self.decoder_layers,
            decoder_attention_heads=self.decoder_attention_heads,
            decoder_ffn_dim=self.decoder_ffn_dim,
            max_source_positions=self.max_source_positions,
            max_target_positions=self.max_target_positions,
            pad_token_id=special,
            bos_token_id=special,
            eos_token_id=special,
            decoder_start_token_id=special,
            begin_suppress_tokens=None,
            suppress_tokens=None,
        )


@dataclass
class CtcTraining:
    """CTC training; it stops after ``max_steps`` or at ``max_minutes`` of training, whichever comes first."""

    seed: int = 0
    threads: int = 2
    max_steps: int = 2000
    max_minutes: float = 8.0
    batch_frames: int = 3000  # log-mel frames (10 ms each) per batch, padding included
    lr: float = 1e-3
    warmup_steps: int = 100
    grad_clip: float = 5.0
    log_every: int = 25
    freq_masks: int = 2  # SpecAugment-lite: masks per utterance on the mel axis ...
    freq_mask_width: int = 10
    time_masks: int = 2  # ... and on the time axis (frames)
    time_mask_width: int = 20


@dataclass
class WhisperStandIn:
    """The ``whisper:`` section of conf/stand_ins.yaml."""

    shape: EncoderShape = field(default_factory=EncoderShape)
    ctc: CtcTraining = field(default_factory=CtcTraining)


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


@dataclass
class Utterance:
    utt_id: str
    feats: torch.Tensor  # (T, n_mels)
    text: str


def read_split(corpus: Path, split: str, n_mels: int) -> list[Utterance]:
    """Every wav of ``CORPUS/data_aishell/wav/SPLIT/*/*.wav`` with its markup-free transcript and log-mel."""
    transcript = read_kaldi_text(corpus / TRANSCRIPT)
    wavs = sorted((corpus / WAV_DIR / split).glob("*/*.wav"))
    if not wavs:
        raise FileNotFoundError(f"{corpus / WAV_DIR / split}: no SPK/UTT.wav files")
    untranscribed = [str(w) for w in wavs if w.stem not in transcript]
    if untranscribed:
        raise ValueError(
            f"{corpus / TRANSCRIPT}: no transcript for {len(untranscribed)} {split} wavs, e.g. {untranscribed[:5]}"
        )
    frontend = WhisperLogMel(n_mels)
    utterances = []
    for wav in wavs:
        samples, rate = soundfile.read(wav, dtype="float32")
        if rate != SAMPLE_RATE or samples.ndim != 1:
            raise ValueError(f"{wav}: expected 16 kHz mono, got {rate} Hz with shape {samples.shape}")
        text = "".join(transcript[wav.stem].split())
        if not text:
            raise ValueError(f"{corpus / TRANSCRIPT}: utterance {wav.stem} has an empty transcript")
        try:
            with torch.no_grad():
                feats = frontend(torch.from_numpy(samples)[None], torch.tensor([len(samples)]))[0][0]
        except ValueError as err:
            raise ValueError(f"{wav}: {err}") from err
        utterances.append(Utterance(wav.stem, feats, text))
    return utterances


class CtcEncoder(torch.nn.Module):
    """The Whisper encoder with a linear CTC head; index 0 of the head is the blank."""

    def __init__(self, config: WhisperConfig, vocab_size: int) -> None:
        super().__init__()
        # The variable-length subclass is frozen on construction (its use in the recipe); unfreeze it here.
        # Its eval-only mode costs nothing: Whisper's configs have no dropout.
        self.encoder = FrozenWhisperEncoder(config).requires_grad_(True)
        self.head = torch.nn.Linear(config.d_model, vocab_size)
        # Whisper's positions are fixed sinusoids, never trained. The projections take PyTorch's default
        # init instead of HF's std 0.02: at this width the small init leaves the convolutions' output far
        # below the sinusoids' and CTC stalls (probe: 8 utterances, 300 steps, loss 0.1 vs 0.01).
        with torch.no_grad():
            self.encoder.embed_positions.weight.copy_(sinusoids(*self.encoder.embed_positions.weight.shape))
        self.encoder.embed_positions.requires_grad_(False)
        for module in self.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d)):
                module.reset_parameters()

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, out_lengths = self.encoder(feats, lengths)
        return self.head(hidden).log_softmax(-1), out_lengths


def length_buckets(utterances: list[Utterance], batch_frames: int) -> list[list[int]]:
    """Batches of similar-length utterances whose padded size stays within ``batch_frames``."""
    order = sorted(range(len(utterances)), key=lambda i: (utterances[i].feats.shape[0], utterances[i].utt_id))
    batches: list[list[int]] = []
    for i in order:
        frames = utterances[i].feats.shape[0]
        if batches and frames * (len(batches[-1]) + 1) <= batch_frames:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def collate(utterances: list[Utterance]) -> tuple[torch.Tensor, torch.Tensor]:
    feats = torch.nn.utils.rnn.pad_sequence([u.feats for u in utterances], batch_first=True)
    return feats, torch.tensor([u.feats.shape[0] for u in utterances])


def spec_augment(feats: torch.Tensor, lengths: torch.Tensor, cfg: CtcTraining, gen: torch.Generator) -> torch.Tensor:
    """Zero random mel bands and frame spans of each utterance (a light SpecAugment)."""
    feats = feats.clone()
    n_mels = feats.shape[2]
    for b, length in enumerate(lengths.tolist()):
        for _ in range(cfg.freq_masks):
            width = int(torch.randint(0, cfg.freq_mask_width + 1, (), generator=gen))
            start = int(torch.randint(0, max(1, n_mels - width), (), generator=gen))
            feats[b, :, start : start + width] = 0.0
        for _ in range(cfg.time_masks):
            width = min(int(torch.randint(0, cfg.time_mask_width + 1, (), generator=gen)), length // 5)
            start = int(torch.randint(0, max(1, length - width), (), generator=gen))
            feats[b, start : start + width] = 0.0
    return feats


def budgeted_schedule(
    num_batches: int, max_steps: int, max_minutes: float, gen: torch.Generator
) -> Iterator[tuple[int, int]]:
    """``(epoch, batch index)``, batches in a new random order each epoch, until ``max_steps`` have been
    yielded or ``max_minutes`` have passed (checked before each step)."""
    start = time.monotonic()
    step = epoch = 0
    while step < max_steps:
        epoch += 1
        for b in torch.randperm(num_batches, generator=gen).tolist():
            if step >= max_steps or time.monotonic() - start >= 60 * max_minutes:
                return
            yield epoch, b
            step += 1


def check_ctc_feasible(utterances: list[Utterance]) -> None:
    """CTC needs at least one output frame per label (two between repeated labels)."""
    for u in utterances:
        frames = int(encoder_output_lengths(torch.tensor(u.feats.shape[0])))
        needed = len(u.text) + sum(a == b for a, b in zip(u.text, u.text[1:]))
        if frames < needed:
            raise ValueError(f"utterance {u.utt_id}: {frames} encoder frames cannot carry {needed} CTC labels")


def greedy_cer(model: CtcEncoder, utterances: list[Utterance], chars: list[str], batch_frames: int) -> float:
    """Greedy CTC decoding (best path, repeats merged, blanks removed); CER in percent."""
    counts = ErrorCounts()
    model.eval()
    with torch.no_grad():
        for batch in length_buckets(utterances, batch_frames):
            items = [utterances[i] for i in batch]
            log_probs, out_lengths = model(*collate(items))
            for u, best, n in zip(items, log_probs.argmax(-1), out_lengths.tolist()):
                path = torch.unique_consecutive(best[:n]).tolist()
                counts.add(align(u.text, "".join(chars[k] for k in path if k != 0)))
    return counts.cer


def pretrain(corpus: Path, out: Path, cfg: WhisperStandIn) -> tuple[FrozenWhisperEncoder, dict]:
    """Train, evaluate and save; returns the trained encoder and the report written to ``ctc_report.json``."""
    torch.set_num_threads(cfg.ctc.threads)
    random.seed(cfg.ctc.seed)
    torch.manual_seed(cfg.ctc.seed)
    gen = torch.Generator().manual_seed(cfg.ctc.seed)

    start = time.monotonic()
    train = read_split(corpus, "train", cfg.shape.num_mel_bins)
    dev = read_split(corpus, "dev", cfg.shape.num_mel_bins)
    check_ctc_feasible(train)
    chars = [BLANK] + sorted({c for u in train for c in u.text})
    index = {c: i for i, c in enumerate(chars)}
    train_seconds = sum(u.feats.shape[0] for u in train) / 100
    log.info(
        "features: %d train utterances (%.1f min), %d dev, %d characters, in %.0f s",
        len(train), train_seconds / 60, len(dev), len(chars) - 1, time.monotonic() - start,
    )  # fmt: skip

    config = cfg.shape.whisper_config()
    model = CtcEncoder(config, len(chars))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.ctc.lr)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / cfg.ctc.warmup_steps))
    ctc_loss = torch.nn.CTCLoss(blank=0)
    batches = length_buckets(train, cfg.ctc.batch_frames)
    train_start = time.monotonic()
    step = epoch = 0
    model.train()
    for epoch, b in budgeted_schedule(len(batches), cfg.ctc.max_steps, cfg.ctc.max_minutes, gen):
        items = [train[i] for i in batches[b]]
        feats, lengths = collate(items)
        log_probs, out_lengths = model(spec_augment(feats, lengths, cfg.ctc, gen), lengths)
        targets = torch.tensor([index[c] for u in items for c in u.text])
        target_lengths = torch.tensor([len(u.text) for u in items])
        loss = ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, target_lengths)
        if not torch.isfinite(loss):
            raise RuntimeError(f"step {step}: CTC loss {loss.item()} on {[u.utt_id for u in items]}")
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.ctc.grad_clip)
        optimizer.step()
        warmup.step()
        step += 1
        if step % cfg.ctc.log_every == 0:
            minutes = (time.monotonic() - train_start) / 60
            log.info("epoch %d step %d: CTC loss %.3f, %.1f min", epoch, step, loss.item(), minutes)
    minutes = (time.monotonic() - train_start) / 60
    dev_cer = greedy_cer(model, dev, chars, cfg.ctc.batch_frames)
    log.info("trained %d steps (%d epochs) in %.2f min; dev greedy CTC CER %.2f%%", step, epoch, minutes, dev_cer)

    save_whisper_directory(model.encoder, config, out, cfg.ctc.seed)
    report = {
        "dev_ctc_cer": round(dev_cer, 2),
        "steps": step,
        "epochs": epoch,
        "train_minutes": round(minutes, 2),
        "train_utterances": len(train),
        "dev_utterances": len(dev),
        "characters": len(chars) - 1,
        "config": asdict(cfg),
    }
    (out / "ctc_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return model.encoder.requires_grad_(False).eval(), report


def save_whisper_directory(encoder: FrozenWhisperEncoder, config: WhisperConfig, out: Path, seed: int) -> None:
    """``WhisperModel.save_pretrained`` with the trained encoder and a seeded random decoder, plus the
    feature extractor's ``preprocessor_config.json``, as in openai/whisper-large-v2's HF repository."""
    torch.manual_seed(seed)
    whisper = WhisperModel(config)
    whisper.encoder.load_state_dict(encoder.state_dict(), strict=True)
    out.mkdir(parents=True, exist_ok=True)
    whisper.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="root holding data_aishell/ (AISHELL-1 layout)")
    parser.add_argument("--out", type=Path, required=True, help="output Hugging Face Whisper directory")
    parser.add_argument("--config", type=Path, required=True, help="YAML with a 'whisper' section")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s", stream=sys.stdout
    )
    return pretrain(args.corpus, args.out, load_config_section(args.config, "whisper", WhisperStandIn))[1]


if __name__ == "__main__":
    main()
