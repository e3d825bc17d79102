"""Batched greedy and beam search for :class:`SpeechLLMModel` over the LLM's KV cache.

Both searches take the left-padded :class:`LLMInputs` of a batch (``prefix [S] prompt`` per item,
from ``model.build_inputs``; any forced text, e.g. long-form history, is part of the prompt) and
run the LLM once over them; every later step feeds one token per live row through
``model.decode_step`` with a transformers ``DynamicCache``. Left padding, the attention mask and
position ids (``cumsum(mask) - 1``) keep each row independent of the others, so a batch decodes
to the same token ids as its items one at a time. Rows whose item has ended leave the batch (the
cache, mask and speech memory are index-selected), so a long item does not make the finished
ones pay. The encoder-decoder's cross-attention keys/values (``SpeechMemory``) are computed once
per utterance, before the first step, and only reordered afterwards.

A hypothesis ends at eos (not included in its ids), at its maximum length, when the
:class:`TextConstraint` says its text is complete, or by the repetition guard: when its last
``repeat_times × n`` tokens are one n-gram (n ≤ ``repeat_ngram``) said ``repeat_times`` times,
it ends with the extra copies removed (a stuck LLM otherwise writes until the length limit).

The maximum length follows the input: ``min(maxlen_cap, ceil(maxlenratio × F) + maxlen_const)``
new tokens, with ``F`` the encoder frames of the current utterance (history text is forced,
not generated).

Beam search keeps ``beam_size`` live hypotheses per item, ranked by their log-probability sum;
a hypothesis that ends is scored ``sum / len ** length_penalty`` (``len`` counting eos; 0 = the
plain sum, larger values favour longer outputs) and the item stops once ``beam_size`` have
ended. With ``beam_size`` 1 this is exactly greedy search. ``use_cache=False`` recomputes the
whole sequence at each step (a reference for tests and benchmarks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from transformers import DynamicCache

from espnet2_ext.speechllm.espnet_model import LLMInputs, SpeechLLMModel

# How many trailing tokens are decoded to look for a constraint's marker text.
_MARKER_WINDOW = 16


@dataclass(frozen=True)
class DecodingOptions:
    """Search settings (see the module docstring)."""

    beam_size: int = 1
    length_penalty: float = 0.0
    maxlenratio: float = 0.5
    maxlen_const: int = 20
    maxlen_cap: int = 1000
    repeat_ngram: int = 8
    repeat_times: int = 4
    nbest: int = 1
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.beam_size < 1 or not 1 <= self.nbest <= self.beam_size:
            raise ValueError(f"need beam_size >= 1 and 1 <= nbest <= beam_size, got {self.beam_size}, {self.nbest}")
        if self.maxlenratio < 0 or self.maxlen_const < 0 or self.maxlen_cap < 1:
            raise ValueError("need maxlenratio >= 0, maxlen_const >= 0 and maxlen_cap >= 1")
        if self.repeat_times < 2 or self.repeat_ngram < 1:
            raise ValueError("need repeat_times >= 2 and repeat_ngram >= 1")

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


class _Searcher:
    """Per-search rules shared by greedy and beam search: extension, ending, eos masking."""

    def __init__(self, eos_id: int, options: DecodingOptions, constraint: TextConstraint | None) -> None:
        self.eos_id = eos_id
        self.options = options
        self.constraint = constraint

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


class _LLMState:
    """The LLM side of a search: KV cache (or full inputs), mask, positions, speech memory per row."""

    def __init__(self, model: SpeechLLMModel, inputs: LLMInputs, use_cache: bool) -> None:
        self.model = model
        self.cache = DynamicCache(config=model.llm.config) if use_cache else None
        self.embeds = inputs.inputs_embeds  # cached: only the not-yet-seen positions
        self.mask = inputs.attention_mask
        self.positions = inputs.position_ids
        self.memory = inputs.speech_memory

    def logprobs(self) -> torch.Tensor:
        """(R, V) float32 log-probabilities of the next token of every row."""
        positions = self.positions[:, -self.embeds.size(1) :]
        logits = self.model.decode_step(LLMInputs(self.embeds, self.mask, positions, None, self.memory), self.cache)
        return torch.log_softmax(logits.float(), dim=-1)

    def select(self, rows: torch.Tensor) -> None:
        """Keep/reorder/duplicate rows (``rows`` indexes the current rows)."""
        if self.cache is not None:
            self.cache.reorder_cache(rows)
            self.embeds = self.embeds[:, :0]
        else:
            self.embeds = self.embeds.index_select(0, rows)
        self.mask = self.mask.index_select(0, rows)
        self.positions = self.positions.index_select(0, rows)
        if self.memory is not None:
            self.memory = self.memory.index_select(rows)

    def append(self, tokens: torch.Tensor) -> None:
        """Feed one token (R,) per row at the next step."""
        new = self.model.embed_tokens(tokens)[:, None].to(self.embeds.dtype)
        self.embeds = new if self.cache is not None else torch.cat([self.embeds, new], dim=1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)
        self.positions = torch.cat([self.positions, self.positions[:, -1:] + 1], dim=1)


@torch.no_grad()
def greedy_search(
    model: SpeechLLMModel,
    inputs: LLMInputs,
    max_new_tokens: Sequence[int],
    options: DecodingOptions = DecodingOptions(),
    constraint: TextConstraint | None = None,
) -> list[Hypothesis]:
    """The most probable token at every step, per item; finished items leave the batch."""
    rules = _Searcher(model.eos_id, options, constraint)
    state = _LLMState(model, inputs, options.use_cache)
    hyps = [rules.start() for _ in max_new_tokens]
    rows = list(range(len(hyps)))  # item of each live row
    while rows:
        logprobs = rules.mask(state.logprobs(), [hyps[i] for i in rows])
        best = logprobs.argmax(-1)
        chosen = logprobs.gather(1, best[:, None])[:, 0].tolist()
        keep = []
        for r, (item, token) in enumerate(zip(rows, best.tolist())):
            hyps[item] = rules.extend(hyps[item], token, chosen[r], max_new_tokens[item])
            if not hyps[item].end:
                keep.append(r)
        if len(keep) < len(rows):
            if not keep:
                break
            index = torch.tensor(keep, device=best.device)
            state.select(index)
            best = best.index_select(0, index)
            rows = [rows[r] for r in keep]
        state.append(best)
    return hyps


@torch.no_grad()
def beam_search(
    model: SpeechLLMModel,
    inputs: LLMInputs,
    max_new_tokens: Sequence[int],
    options: DecodingOptions = DecodingOptions(),
    constraint: TextConstraint | None = None,
) -> list[list[Hypothesis]]:
    """The ``options.nbest`` best ended hypotheses per item, best first (batched over items and beams)."""
    beam = options.beam_size
    rules = _Searcher(model.eos_id, options, constraint)
    state = _LLMState(model, inputs, options.use_cache)
    ended: list[list[Hypothesis]] = [[] for _ in max_new_tokens]
    live: list[tuple[int, Hypothesis]] = [(item, rules.start()) for item in range(len(max_new_tokens))]
    while live:
        logprobs = rules.mask(state.logprobs(), [h for _, h in live])
        width = min(2 * beam, logprobs.size(-1))
        top_lp, top_ids = (t.tolist() for t in logprobs.topk(width, dim=-1))
        candidates: dict[int, list[tuple[float, int, int, float]]] = {}
        for r, (item, hyp) in enumerate(live):
            for lp, token in zip(top_lp[r], top_ids[r]):
                if lp > float("-inf"):
                    candidates.setdefault(item, []).append((hyp.logprob_sum + lp, r, token, lp))
        next_live: list[tuple[int, Hypothesis]] = []
        source_rows: list[int] = []
        tokens: list[int] = []
        for item, cands in candidates.items():
            cands.sort(key=lambda c: -c[0])
            kept: list[tuple[int, Hypothesis, int]] = []
            for rank, (_, r, token, lp) in enumerate(cands):
                if len(kept) == beam:
                    break
                new = rules.extend(live[r][1], token, lp, max_new_tokens[item])
                if not new.end:
                    kept.append((r, new, token))
                elif rank < beam:  # as in HF: an ending candidate counts only within the top beam
                    ended[item].append(new)
            if len(ended[item]) >= beam:
                continue
            for r, new, token in kept:
                next_live.append((item, new))
                source_rows.append(r)
                tokens.append(token)
        live = next_live
        if not live:
            break
        device = inputs.attention_mask.device
        state.select(torch.tensor(source_rows, device=device))
        state.append(torch.tensor(tokens, device=device))
    return [sorted(hyps, key=lambda h: -h.score)[: options.nbest] for hyps in ended]


def decode(
    model: SpeechLLMModel,
    inputs: LLMInputs,
    max_new_tokens: Sequence[int],
    options: DecodingOptions = DecodingOptions(),
    constraint: TextConstraint | None = None,
) -> list[list[Hypothesis]]:
    """n-best lists per item: greedy search for ``beam_size`` 1 (the fast path), else beam search."""
    if options.beam_size == 1:
        return [[h] for h in greedy_search(model, inputs, max_new_tokens, options, constraint)]
    return beam_search(model, inputs, max_new_tokens, options, constraint)
