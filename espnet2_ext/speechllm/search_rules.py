"""What every search of :mod:`espnet2_ext.speechllm.decoding` shares: options, constraints, ending rules.

The reference searches (``decoding``) and the static-cache greedy search (``fast_decoding``)
apply the same :class:`SearchRules` to every token, so they end hypotheses at the same places.
See :mod:`espnet2_ext.speechllm.decoding` for the rules themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

# How many trailing tokens are decoded to look for a constraint's marker text.
_MARKER_WINDOW = 16
CACHES = ("dynamic", "static")
COMPILE_MODES = ("none", "cudagraph", "inductor")


@dataclass(frozen=True)
class DecodingOptions:
    """Search settings (see :mod:`espnet2_ext.speechllm.decoding`).

    ``cache``, ``compile``, ``sync_every`` and ``cache_chunk`` choose how greedy search runs, never
    what it outputs: ``dynamic`` is the reference (a growing cache, finished rows leave the batch);
    ``static`` is :mod:`espnet2_ext.speechllm.fast_decoding` (a preallocated cache of
    ``cache_chunk``-rounded length, a fixed batch, tokens read back every ``sync_every`` steps),
    whose decode step ``compile`` may replay as a CUDA graph (``cudagraph``) or build with
    torch.compile/inductor first (``inductor``); both fall back to plain eager steps off CUDA.
    """

    beam_size: int = 1
    length_penalty: float = 0.0
    maxlenratio: float = 0.5
    maxlen_const: int = 20
    maxlen_cap: int = 1000
    repeat_ngram: int = 8
    repeat_times: int = 4
    nbest: int = 1
    use_cache: bool = True
    cache: str = "dynamic"
    compile: str = "none"
    sync_every: int = 4
    cache_chunk: int = 64

    def __post_init__(self) -> None:
        if self.beam_size < 1 or not 1 <= self.nbest <= self.beam_size:
            raise ValueError(f"need beam_size >= 1 and 1 <= nbest <= beam_size, got {self.beam_size}, {self.nbest}")
        if self.maxlenratio < 0 or self.maxlen_const < 0 or self.maxlen_cap < 1:
            raise ValueError("need maxlenratio >= 0, maxlen_const >= 0 and maxlen_cap >= 1")
        if self.repeat_times < 2 or self.repeat_ngram < 1:
            raise ValueError("need repeat_times >= 2 and repeat_ngram >= 1")
        if self.cache not in CACHES or self.compile not in COMPILE_MODES:
            raise ValueError(
                f"need cache in {CACHES} and compile in {COMPILE_MODES}, got {self.cache!r}, {self.compile!r}"
            )
        if self.cache == "static" and (self.beam_size != 1 or not self.use_cache):
            raise ValueError("cache='static' is greedy search with a KV cache: needs beam_size 1 and use_cache true")
        if self.compile != "none" and self.cache != "static":
            raise ValueError(f"compile={self.compile!r} needs cache='static' (a dynamic cache changes shape each step)")
        if self.sync_every < 1 or self.cache_chunk < 1:
            raise ValueError(f"need sync_every >= 1 and cache_chunk >= 1, got {self.sync_every}, {self.cache_chunk}")

    def max_new_tokens(self, frames: int) -> int:
        """Length limit for a current utterance of ``frames`` encoder frames."""
        return max(1, min(self.maxlen_cap, math.ceil(self.maxlenratio * frames) + self.maxlen_const))


@dataclass(frozen=True)
class TextConstraint:
    """What the output text of a task must do, checked on the decoded text of the newest tokens.

    ``require``: eos is not allowed before the text contains it (CoT NER must reach ``|ner|``).
    ``stop``: the hypothesis ends as soon as the text contains it (ASR ends at ``|ner|``).
    """

    decode: Callable[[Sequence[int]], str]
    require: str | None = None
    stop: str | None = None

    def contains(self, ids: Sequence[int], marker: str) -> bool:
        return marker in self.decode(ids[-_MARKER_WINDOW:])


@dataclass
class Hypothesis:
    """A generated token sequence (eos excluded) with per-token log-probabilities."""

    ids: list[int]
    token_logprobs: list[float]
    score: float = 0.0
    end: str = ""  # eos | stop | repetition | max_length
    satisfied: bool = True  # the constraint's ``require`` text has appeared
    logprob_sum: float = field(default=0.0, repr=False)


def repeated_ngram(ids: Sequence[int], max_n: int, times: int) -> int:
    """The n (≤ ``max_n``) for which ``ids`` ends with one n-gram repeated ``times`` times, else 0."""
    for n in range(1, max_n + 1):
        if len(ids) < n * times:
            break
        tail = ids[len(ids) - n :]
        if all(list(ids[len(ids) - k * n : len(ids) - (k - 1) * n]) == list(tail) for k in range(2, times + 1)):
            return n
    return 0


class SearchRules:
    """Per-search rules shared by every search: extension, ending, eos masking."""

    def __init__(self, eos_id: int, options: DecodingOptions, constraint: TextConstraint | None) -> None:
        self.eos_id = eos_id
        self.options = options
        self.constraint = constraint

    @property
    def blocks_eos(self) -> bool:
        """Whether a fresh hypothesis may not end at eos yet (the constraint requires some text first)."""
        return not self.start().satisfied

    def start(self) -> Hypothesis:
        return Hypothesis([], [], satisfied=self.constraint is None or self.constraint.require is None)

    def mask(self, logprobs: torch.Tensor, hyps: Sequence[Hypothesis]) -> torch.Tensor:
        """Forbid eos for rows whose required text has not appeared yet."""
        blocked = [r for r, h in enumerate(hyps) if not h.satisfied]
        if blocked:
            logprobs[blocked, self.eos_id] = float("-inf")
        return logprobs

    def extend(self, hyp: Hypothesis, token: int, logprob: float, max_len: int) -> Hypothesis:
        """``hyp`` followed by ``token``; ``end`` set when it ends there."""
        total = hyp.logprob_sum + logprob
        if token == self.eos_id:
            return replace(hyp, logprob_sum=total, end="eos", score=self._final(total, len(hyp.ids) + 1))
        ids, lps = hyp.ids + [token], hyp.token_logprobs + [logprob]
        new = replace(hyp, ids=ids, token_logprobs=lps, logprob_sum=total)
        if self.constraint is not None:
            if not new.satisfied and self.constraint.contains(ids, self.constraint.require):
                new.satisfied = True
            if self.constraint.stop is not None and self.constraint.contains(ids, self.constraint.stop):
                new.end = "stop"
        n = repeated_ngram(ids, self.options.repeat_ngram, self.options.repeat_times)
        if not new.end and n:
            cut = len(ids) - (self.options.repeat_times - 1) * n
            new.ids, new.token_logprobs, new.end = ids[:cut], lps[:cut], "repetition"
        if not new.end and len(ids) >= max_len:
            new.end = "max_length"
        if new.end:
            new.score = self._final(total, len(new.ids))
        return new

    def _final(self, total: float, length: int) -> float:
        return total / max(length, 1) ** self.options.length_penalty
