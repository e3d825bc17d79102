"""Turns one utterance into a Table-1 training example: concatenated speech, segment layout, prompt, target.

ESPnet hands the preprocessor one utterance (``speech`` (T, D) float, ``text`` with entity
markup); the other utterances a format needs (random partners for short-form ASR, history for
long-form ASR and CoT NER) are read here by utterance id from ``feats_scp`` (kaldiio, lazy;
float16 or float32 dumps, one dtype per dump, checked when the preprocessor is built: see
:mod:`espnet2_ext.feats_io`) and ``text_file``. ``history_file`` lines are ``uttid prev_1 … prev_n``: that utterance's
predecessors from the same speaker in chronological order, **most recent last**; k history
utterances are the last k entries.

Output (all numpy): ``speech`` (T, D) float32 segments back to back (history oldest first,
current last), ``speech_segments`` int64 frames per segment, ``num_history`` int64 (1,) (γ goes
before the current segment when > 0), ``prompt`` int64 ids of ``|asr|``, ``text`` int64 target
ids + eos (see :mod:`prompts`).

The input never exceeds ``max_input_seconds`` (30: Whisper's window), counted in seconds whatever
the input is: ``frames_per_second`` (set by the task from the encoder: 50 for cached encoder
outputs, 100 for log-mel) turns it into frames. The current utterance is always kept whole and
history/partner utterances are added only while they fit whole, nearest first, so the oldest
history goes first and every transcript in the target matches audio in the input (a partly
cropped history utterance would ask the model to transcribe speech it cannot hear). A current
utterance longer than the limit is an error naming it (stage 3 lists such utterances as bad).

Randomness (task choice, number of concatenated/history utterances, partners) is drawn from a
generator seeded by (seed, epoch, utterance id), so an epoch is reproducible, also after
``--resume`` and with data-loader workers; the task sets the epoch via :meth:`set_epoch`.
In eval mode (``train=False``) nothing is random: ``eval_task``, ``eval_history`` history
utterances, no concatenation.
"""

from __future__ import annotations

import hashlib
from collections import ChainMap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from espnet2.train.preprocessor import AbsPreprocessor

from espnet2_ext.feats_io import open_features
from espnet2_ext.speechllm.prompts import build_target_text, check_task
from espnet2_ext.text.chatglm3_tokenizer import ASR_TOKEN, ChatGLM3Tokenizer
from espnet2_ext.text.kaldi_text import read_history_file, read_kaldi_text_lines
from espnet2_ext.text.ner_markup import parse_markup


def _as_list(paths: str | Sequence[str] | None) -> list[str]:
    if paths is None:
        return []
    return [paths] if isinstance(paths, (str, Path)) else list(paths)


@dataclass(frozen=True)
class ExamplePlan:
    """One example's make-up: task, utterances whose speech is joined (in order), history count, target text."""

    task: str
    segments: tuple[str, ...]
    num_history: int
    target: str


def fitting_history(history_frames: Sequence[int], budget: int) -> int:
    """How many of the history utterances (oldest first) go in: whole ones, nearest first, within ``budget``."""
    kept = 0
    for frames in reversed(history_frames):
        if frames > budget:
            break
        budget -= frames
        kept += 1
    return kept


class SpeechLLMPreprocessor(AbsPreprocessor):
    """Builds Table-1 examples; see the module docstring for the data flow and the decisions."""

    def __init__(
        self,
        train: bool,
        tokenizer_file: str,
        feats_scp: str | Sequence[str],
        text_file: str | Sequence[str],
        history_file: str | Sequence[str] | None = None,
        tasks: Mapping[str, float] | None = None,
        max_concat: int = 1,
        max_history: int = 0,
        eval_task: str = "short_asr",
        eval_history: int = 0,
        max_input_seconds: float = 30.0,
        frames_per_second: float = 50.0,
        seed: int = 0,
    ) -> None:
        super().__init__(train)
        self.tasks = dict(tasks or {"short_asr": 1.0})
        for task, weight in self.tasks.items():
            check_task(task)
            if weight < 0:
                raise ValueError(f"task weight of {task} is negative: {weight}")
        if sum(self.tasks.values()) <= 0:
            raise ValueError(f"task weights {self.tasks} sum to zero")
        self.eval_task = check_task(eval_task)
        if max_concat < 1 or max_history < 0 or eval_history < 0 or max_input_seconds <= 0 or frames_per_second <= 0:
            raise ValueError(
                "need max_concat >= 1, max_history >= 0, eval_history >= 0, max_input_seconds > 0, frames_per_second > 0"
            )
        self.max_concat, self.max_history, self.eval_history = max_concat, max_history, eval_history
        self.max_input_seconds = max_input_seconds
        self.max_input_frames = round(max_input_seconds * frames_per_second)
        self.seed = seed
        self.epoch = 0
        self.tokenizer = ChatGLM3Tokenizer(tokenizer_file)
        self.prompt_ids = np.asarray(self.tokenizer.encode(ASR_TOKEN), dtype=np.int64)
        # Lazy random access: a corpus' encoder outputs (~160 GB for AISHELL-1) are never all in memory.
        self.feats = ChainMap(*(open_features(scp) for scp in _as_list(feats_scp)))
        self.texts: dict[str, str] = {}
        for path in _as_list(text_file):
            for line in read_kaldi_text_lines(path):
                parse_markup(line.text, path=str(path), line=line.line_no, utt_id=line.utt_id)
                self.texts[line.utt_id] = line.text
        self.history: dict[str, list[str]] = {}
        for path in _as_list(history_file):
            self.history.update(read_history_file(path))
        self.utt_ids = sorted(self.texts)
        needs_history = self.eval_task != "short_asr" or any(t != "short_asr" for t in self.tasks)
        if needs_history and not self.history:
            raise ValueError("long_asr/cot_ner need a history_file")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, uid: str, epoch: int) -> np.random.Generator:
        digest = hashlib.sha256(f"{self.seed}/{epoch}/{uid}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def _speech(self, uid: str, like: np.ndarray, context: str) -> np.ndarray:
        if uid not in self.feats:
            raise KeyError(f"utterance {uid} ({context}) is not in the feats scp")
        feats = np.asarray(self.feats[uid], dtype=np.float32)
        if feats.ndim != 2 or feats.shape[1] != like.shape[1]:
            raise ValueError(f"utterance {uid} ({context}): features {feats.shape} do not match {like.shape}")
        return feats

    def _text(self, uid: str, context: str) -> str:
        if uid not in self.texts:
            raise KeyError(f"utterance {uid} ({context}) has no transcript in the text file")
        return self.texts[uid]

    def _history_ids(self, uid: str, count: int) -> list[str]:
        if uid not in self.history:
            raise KeyError(f"utterance {uid} is not in the history file")
        return self.history[uid][-count:] if count else []

    def plan(
        self, uid: str, text: str, frames_of: Callable[[str, str], int], epoch: int | None = None
    ) -> ExamplePlan:
        """What the example of ``uid`` in ``epoch`` (default: the current one) is made of.

        ``frames_of(other_uid, context)`` gives an utterance's frame count; the batch sampler
        answers it from the shape file, :meth:`__call__` by loading the features it then uses.
        """
        rng = self._rng(uid, self.epoch if epoch is None else epoch)
        if self.train:
            names = list(self.tasks)
            weights = np.asarray([self.tasks[n] for n in names], dtype=np.float64)
            task = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        else:
            task = self.eval_task
        budget = self.max_input_frames - frames_of(uid, "current")
        segments, texts = [uid], [text]
        if task == "short_asr":
            count = int(rng.integers(1, self.max_concat + 1)) if self.train else 1
            for partner in (rng.choice(self.utt_ids, size=count - 1) if count > 1 else []):
                partner, context = str(partner), f"concatenated with {uid}"
                frames = frames_of(partner, context)
                if frames <= budget:
                    budget -= frames
                    segments.append(partner)
                    texts.append(self._text(partner, context))
            num_history = 0
        else:
            count = int(rng.integers(0, self.max_history + 1)) if self.train else self.eval_history
            previous = self._history_ids(uid, count)
            frames = [frames_of(p, f"history of {uid}") for p in previous]
            kept = previous[len(previous) - fitting_history(frames, budget) :]
            segments = kept + segments
            texts = [self._text(p, f"history of {uid}") for p in kept] + texts
            num_history = len(kept)
        return ExamplePlan(task, tuple(segments), num_history, build_target_text(task, texts[:-1], texts[-1]))

    def __call__(self, uid: str, data: dict) -> dict[str, np.ndarray]:
        current = np.asarray(data["speech"], dtype=np.float32)
        if current.ndim != 2:
            raise ValueError(f"utterance {uid}: speech must be (frames, dims), got {current.shape}")
        if current.shape[0] > self.max_input_frames:
            raise ValueError(
                f"utterance {uid}: {current.shape[0]} frames exceed max_input_seconds={self.max_input_seconds} "
                f"({self.max_input_frames} frames); remove it from the training data"
            )
        text = data["text"]
        parse_markup(text, utt_id=uid)
        loaded = {uid: current}

        def frames_of(other: str, context: str) -> int:
            if other not in loaded:
                loaded[other] = self._speech(other, current, context)
            return loaded[other].shape[0]

        plan = self.plan(uid, text, frames_of)
        segments = [loaded[s] for s in plan.segments]
        ids = self.tokenizer.encode(plan.target) + [self.tokenizer.eos_id]
        return {
            "speech": np.concatenate(segments),
            "speech_segments": np.asarray([s.shape[0] for s in segments], dtype=np.int64),
            "num_history": np.asarray([plan.num_history], dtype=np.int64),
            "prompt": self.prompt_ids.copy(),
            "text": np.asarray(ids, dtype=np.int64),
        }
