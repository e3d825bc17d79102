"""Sanity check of an installed Whisper directory: espeak-ng says a sentence, Whisper transcribes it greedily.

``tools/venv/bin/python tools/transcribe_espeak.py [--model tools/models/whisper-base] [--text ...]``
prints the transcript. A converted checkpoint with a wrong tensor layout produces
noise rather than a near miss, so this catches what a shape check cannot.
Needs espeak-ng and sox (``make -C tools system``).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import soundfile
import torch
from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

SAMPLE_RATE = 16000


def speak(text: str, voice: str = "en") -> torch.Tensor:
    """16-kHz waveform of espeak-ng reading ``text`` (resampled by sox without dither: reproducible)."""
    with tempfile.TemporaryDirectory() as tmp:
        raw, wav = Path(tmp) / "raw.wav", Path(tmp) / "16k.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True)
        subprocess.run(["sox", "-V1", "-D", str(raw), "-r", str(SAMPLE_RATE), str(wav)], check=True)
        samples, rate = soundfile.read(wav, dtype="float32")
    assert rate == SAMPLE_RATE, rate
    return torch.from_numpy(samples)


def transcribe(model_dir: Path, wave: torch.Tensor, language: str = "en") -> str:
    """Greedy Whisper transcript of one 16-kHz waveform (up to 30 s)."""
    model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    features = WhisperFeatureExtractor.from_pretrained(model_dir)(
        wave.numpy(), sampling_rate=SAMPLE_RATE, return_tensors="pt"
    ).input_features
    with torch.inference_mode():
        ids = model.generate(features, language=language, task="transcribe", num_beams=1, do_sample=False)
    return WhisperTokenizer.from_pretrained(model_dir).batch_decode(ids, skip_special_tokens=True)[0].strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path(__file__).resolve().parent / "models" / "whisper-base")
    parser.add_argument("--text", default="the quick brown fox jumps over the lazy dog")
    parser.add_argument("--voice", default="en", help="espeak-ng voice")
    parser.add_argument("--language", default="en", help="Whisper language code")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    print(transcribe(args.model, speak(args.text, args.voice), args.language))
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
