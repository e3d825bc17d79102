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

Greedy search with ``DecodingOptions(cache="static")`` runs
:mod:`espnet2_ext.speechllm.fast_decoding` (preallocated cache, fixed batch, decode step
replayable as a CUDA graph): the same token ids, up to the rounding of attention over a longer
(masked) cache (see there). The options, constraints and ending rules both use live in
:mod:`espnet2_ext.speechllm.search_rules`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from espnet2_ext.speechllm.espnet_model import LLMInputs, SpeechLLMModel
from espnet2_ext.speechllm.fast_decoding import static_greedy_search
from espnet2_ext.speechllm.search_rules import (
    DecodingOptions,
    Hypothesis,
    SearchRules,
    TextConstraint,
    repeated_ngram,
)

__all__ = [
    "DecodingOptions",
    "Hypothesis",
    "TextConstraint",
    "beam_search",
    "decode",
    "greedy_search",
    "repeated_ngram",
]


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
    """The most probable token at every step, per item; finished items leave the batch.

    ``options.cache == "static"`` runs :func:`~espnet2_ext.speechllm.fast_decoding.static_greedy_search`
    instead (same token ids, built for speed on a GPU).
    """
    if options.cache == "static":
        return static_greedy_search(model, inputs, max_new_tokens, options, constraint)
    rules = SearchRules(model.eos_id, options, constraint)
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
    rules = SearchRules(model.eos_id, options, constraint)
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
