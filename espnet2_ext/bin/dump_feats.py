"""Dump Whisper log-mel features, or frozen Whisper encoder outputs, for one split of a data dir.

Run by the recipe as ``JOB=1:nj`` jobs::

    python -m espnet2_ext.bin.dump_feats --wav_scp data/train/wav.scp --key_file split/keys.JOB \\
        --out_dir dump/train/mel --name feats.JOB [--n_mels 80 | --whisper PATH] [--dump_dtype float16] \\
        [--encoder_out --whisper PATH --pad_to_30s true --batch_size 8 --device cpu|cuda --dtype auto]

writes ``NAME.ark``/``NAME.scp`` (matrices: log-mel ``(T, n_mels)`` or, with
``--encoder_out``, encoder outputs ``(T', d)``, stored as ``--dump_dtype``: float16 by default,
half the size of float32; see :mod:`espnet2_ext.feats_io`), ``STEM_shape.JOB``
(``uttid T,D``), ``bad_utts.JOB`` (``uttid reason``) and ``STEM_conf.json`` (input
type, ``pad_to_30s``, ``n_mels``, sample rate: what ``bin/pack_model.py`` records; and
``dump_dtype``), where ``NAME`` = ``STEM.JOB``. A job refuses to write into a directory whose
``STEM_conf.json`` records other settings (its dump would mix with theirs).

The encoder runs on ``--device`` (``cuda``: the job's GPU, an error when it sees none) in
``--dtype`` (``auto``: bfloat16 on a GPU, float32 on the CPU), ``--batch_size`` utterances at a
time, sorted by length within windows of 8 batches (less padding); the archive holds them in
that order (the recipe sorts the merged ``feats.scp``). Log-mel is computed one utterance at a
time, in key order. A progress line (done/total, utterances/s, ETA) is logged every
``--log_every`` utterances.

With ``--pad_to_30s true`` features are Whisper's 30-s window and the encoder runs on it; what
is written is trimmed to the valid frames (``T = min(N // 160, 3000)``,
``T' = (T - 1) // 2 + 1``); longer audio is cropped to 30 s and reported. Unreadable, missing,
non-16-kHz, multi-channel or too-short audio is listed in ``bad_utts.JOB``; the exit code is
non-zero for such items only with ``--strict``.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from espnet2.utils.types import str2bool

from espnet2_ext.checkpoint_io import DTYPES
from espnet2_ext.cli import add_verbose_argument, run_cli
from espnet2_ext.devices import DTYPE_CHOICES, check_device, resolve_dtype
from espnet2_ext.errors import UserError
from espnet2_ext.feats_io import DUMP_DTYPES, feature_writer, to_dump_dtype
from espnet2_ext.progress import Progress
from espnet2_ext.speechllm.frontend import CHUNK_SAMPLES, HOP_LENGTH, SAMPLE_RATE, WhisperLogMel
from espnet2_ext.speechllm.input_settings import (
    FeatureSettings,
    read_feature_settings,
    settings_file,
    write_feature_settings,
)
from espnet2_ext.speechllm.whisper_encoder import load_whisper_config, load_whisper_encoder
from espnet2_ext.text.kaldi_text import BadAudio, read_keys, read_wav_scp, read_wave

def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wav_scp", type=Path, required=True, help="Kaldi wav.scp: 'uttid path/to.wav' lines")
    parser.add_argument("--key_file", type=Path, help="utterance ids of this job (first field); default: all")
    parser.add_argument("--out_dir", type=Path, required=True)
    parser.add_argument("--name", default="feats", help="output stem, e.g. feats.3 -> feats.3.ark/.scp")
    parser.add_argument("--n_mels", type=int, help="mel bins (default 80, or --whisper's num_mel_bins)")
    parser.add_argument("--whisper", type=Path, help="Whisper HF directory or OpenAI .pt (n_mels, encoder)")
    parser.add_argument("--encoder_out", action="store_true", help="dump frozen encoder outputs, not log-mel")
    parser.add_argument("--pad_to_30s", type=str2bool, default=False, help="Whisper's 30-s windows")
    parser.add_argument("--batch_size", type=int, default=8, help="utterances per encoder batch")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (the job's GPU)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                        help="encoder dtype (auto: bfloat16 on a GPU, float32 on the CPU)")
    parser.add_argument("--dump_dtype", choices=sorted(DUMP_DTYPES), default="float16",
                        help="how the matrices are stored (float16: half the size)")
    parser.add_argument("--log_every", type=int, default=500, help="a progress line every N utterances")
    parser.add_argument("--strict", action="store_true", help="exit non-zero when any utterance is bad")
    add_verbose_argument(parser)
    return parser


def read_good_waves(
    keys: list[str], wav_scp: dict[str, str], max_samples: int | None, crop_at_30s: bool, bad: list[tuple[str, str]]
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(uttid, wave)`` for readable utterances; append ``(uttid, reason)`` to ``bad`` for the rest."""
    for uttid in keys:
        try:
            wave = read_wave(wav_scp[uttid], SAMPLE_RATE, min_samples=HOP_LENGTH)
            if max_samples is not None and len(wave) > max_samples:
                seconds = len(wave) / SAMPLE_RATE
                raise BadAudio(f"{seconds:.1f} s is longer than Whisper's 30-s window (--pad_to_30s true crops it)")
        except BadAudio as err:
            logging.warning(f"{uttid}: {err}")
            bad.append((uttid, str(err)))
            continue
        if crop_at_30s and len(wave) > CHUNK_SAMPLES:
            logging.warning(f"{uttid}: {len(wave) / SAMPLE_RATE:.1f} s cropped to 30 s")
        yield uttid, wave


def _chunks(items: Iterator[tuple[str, np.ndarray]], size: int) -> Iterator[list[tuple[str, np.ndarray]]]:
    chunk: list[tuple[str, np.ndarray]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def length_sorted_batches(
    items: Iterator[tuple[str, np.ndarray]], size: int, window: int = 8
) -> Iterator[list[tuple[str, np.ndarray]]]:
    """Batches of ``size``, longest first within each run of ``window`` batches (little padding, bounded memory)."""
    for chunk in _chunks(items, size * window):
        chunk.sort(key=lambda item: -len(item[1]))
        yield from _chunks(iter(chunk), size)


def record_settings(scp: Path, settings: FeatureSettings) -> None:
    """Write ``STEM_conf.json``, unless the directory already records a dump made otherwise."""
    record = settings_file(scp)
    existing = read_feature_settings(record)
    if existing is not None and existing != settings:
        raise UserError(
            f"{record} records a dump made with other settings ({existing}); this job ({settings}) would mix "
            f"its matrices with that dump: use the same settings, or an empty --out_dir"
        )
    write_feature_settings(record, settings)


def _output_paths(out_dir: Path, name: str) -> tuple[Path, Path, Path, Path]:
    """``feats.3`` -> feats.3.ark, feats.3.scp, feats_shape.3, bad_utts.3."""
    stem, job = re.fullmatch(r"(.*?)((?:\.\d+)?)", name).groups()
    shape_file, bad_file = out_dir / f"{stem}_shape{job}", out_dir / f"bad_utts{job}"
    return out_dir / f"{name}.ark", out_dir / f"{name}.scp", shape_file, bad_file


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    if args.encoder_out and args.whisper is None:
        raise SystemExit("--encoder_out needs --whisper PATH")
    n_mels = args.n_mels or 80
    if args.whisper is not None:
        n_mels = load_whisper_config(args.whisper).num_mel_bins
        if args.n_mels not in (None, n_mels):
            raise SystemExit(f"--n_mels {args.n_mels} contradicts {args.whisper} (num_mel_bins {n_mels})")

    if args.batch_size < 1 or args.log_every < 1:
        raise SystemExit("need --batch_size >= 1 and --log_every >= 1")
    device = check_device(args.device, f"--device {args.device}")
    dtype = DTYPES[resolve_dtype(args.dtype, device)]
    wav_scp = read_wav_scp(args.wav_scp)
    keys = read_keys(args.key_file, wav_scp, args.wav_scp) if args.key_file else list(wav_scp)
    frontend = WhisperLogMel(n_mels=n_mels, pad_to_30s=args.pad_to_30s).to(device)
    encoder = None
    if args.encoder_out:
        encoder = load_whisper_encoder(args.whisper, args.pad_to_30s, dtype=dtype, device=device)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    ark, scp, shape_file, bad_file = _output_paths(args.out_dir, args.name)
    input_type = "encoder_output" if args.encoder_out else "mel"
    record_settings(scp, FeatureSettings(input_type, args.pad_to_30s, n_mels, dump_dtype=args.dump_dtype))
    bad: list[tuple[str, str]] = []
    max_samples = None if args.pad_to_30s else CHUNK_SAMPLES  # log-mel too: the model's Whisper takes 30 s at most
    waves = read_good_waves(keys, wav_scp, max_samples, args.pad_to_30s, bad)
    written = 0
    progress = Progress(f"dump {scp}", len(keys), args.log_every)
    writer = feature_writer(ark, scp, args.dump_dtype)
    with writer, shape_file.open("w", encoding="utf-8") as shapes:
        batches = length_sorted_batches(waves, args.batch_size) if encoder is not None else _chunks(waves, 1)
        for batch in batches:
            padded = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(w) for _, w in batch], batch_first=True)
            lengths = torch.tensor([len(w) for _, w in batch])
            with torch.no_grad():
                out, out_lengths = frontend(padded.to(device), lengths.to(device))
                if encoder is not None:
                    out, out_lengths = encoder(out.to(dtype), out_lengths)
            for b, (uttid, _) in enumerate(batch):
                matrix = to_dump_dtype(uttid, out[b, : int(out_lengths[b])].float().cpu().numpy(), args.dump_dtype)
                writer(uttid, matrix)
                shapes.write(f"{uttid} {matrix.shape[0]},{matrix.shape[1]}\n")
            written += len(batch)
            progress.update(written + len(bad))
    progress.update(len(keys))
    bad_file.write_text("".join(f"{uttid} {reason}\n" for uttid, reason in bad), encoding="utf-8")
    logging.info(f"{scp}: {written} written ({args.dump_dtype}), {len(bad)} bad (listed in {bad_file})")
    return 1 if bad and args.strict else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
