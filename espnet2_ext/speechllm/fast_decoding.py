"""Fast batched greedy search: a static KV cache, a fixed batch, a decode step replayable as a CUDA graph.

Why. At full size (ChatGLM3-6B in bf16, 6.24e9 parameters) a decode step is memory-bound: it reads
all 12.5 GB of weights once, whatever the batch, so on an H200 (about 4.8 TB/s) no step takes less
than about 2.6 ms. The reference search (:mod:`espnet2_ext.speechllm.decoding`, a transformers
``DynamicCache``) spends about 45 ms per step in Python and in some 600 kernel launches
(``bench/results/gpu_full_size.json``: 50 tokens in 2.2 s at batch 1 and in 2.4 s at batch 32), so
the GPU is idle most of the time and the batch size hardly matters. This search:

* preallocates a transformers ``StaticCache`` (prompt plus room for new tokens, rounded up to
  ``cache_chunk`` slots; grown by ``cache_chunk`` when a row outlives it), so every step has the same
  shapes and tensor addresses;
* keeps the batch fixed: finished rows go on computing (their tokens are ignored) instead of being
  index-selected out of the cache;
* runs the whole step (mask update, LLM forward of one token per row with the model's SDPA attention,
  log-softmax, argmax, next embedding and position) without a host sync, so that ``compile="cudagraph"``
  captures it once per shape as a ``torch.cuda.CUDAGraph`` and replays it (one launch per step), and
  ``compile="inductor"`` builds it with ``torch.compile`` (fused kernels) before capturing it;
* copies the chosen tokens to the host every ``sync_every`` steps and applies the reference's
  :class:`SearchRules` there while the GPU computes the next window.

Same token ids as the reference. The prefill is the reference's own (a ``DynamicCache``, then
copied into the static cache), so the first token and the prompt's keys/values are bit for bit
the same. Each row's later steps depend only on its own prompt, mask and positions; unwritten cache
slots and padded speech-memory positions are masked out, so attention differs from the
reference's only in the rounding of a reduction over more (masked) positions: in float32 the tests
(``tests/test_fast_decoding.py``) find identical ids and log-probabilities; in bf16 two runs agree
up to rounding, as the reference at two batch sizes does (``bench/gpu_decoding.py`` counts it).
The rules end a hypothesis at eos, at its length limit, at a stop text or at a repetition; applying
them a few steps later only decides where the row's output stops, and the tokens computed after
that are dropped. A constraint that ``require``s text before eos makes the reference forbid eos for
rows that have not written it yet; here eos is forbidden for every row on the device, and every
step records whether eos was the unmasked argmax and its log-probability, so a row that had
written the text ends there with eos, as the reference's does.

Expected full size (arithmetic; ``bench/gpu_decoding.py`` measures it and prints it as
``expected_s``). Test set: 7,176 utterances, 36,109 s of audio (5.0 s mean), about 15 characters,
so at most about 17 generated tokens with eos, per utterance; prompt: 2 prefix + 10 speech tokens
per second (50 Hz frames stacked by 5) + the task token, about 54 tokens.

* decode step: 12.5 GB of weights / 4.8 TB/s = 2.6 ms, plus the cache (28 KiB per token and row:
  0.3 ms for 256 rows of 192 slots); compute, 12.5 GFLOP per row, only passes that at batch ~200
  (batch 256: 3.2 TFLOP, 4 ms at 800 TFLOP/s);
* prefill: 7,176 × 54 tokens × 12.5 GFLOP = 4.8 PFLOP, about 6 s at 800 TFLOP/s, whatever the batch;
* decoding: ceil(7176 / B) length-sorted batches × (the batch's longest output, ~20-25 tokens, plus
  up to 2 × ``sync_every`` - 1 steps read back late) × the step time.

With CUDA graphs that is about 23 s for the test set at batch 32, 11 s at 128, 10 s at 256
(RTF 0.0003-0.0006), 40 s at batch 16, and 450 s one utterance at a time (about 65 ms of latency
per utterance): batch 16 or more meets the one-minute target (RTF 0.0017). Without graphs a step
costs ~45 ms at any batch (the measured eager figure), about 4 minutes at batch 32 and 40 s at 256.
"""

from __future__ import annotations

import logging
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache, StaticCache

from espnet2_ext.speechllm.connectors import SpeechMemory
from espnet2_ext.speechllm.espnet_model import LLMInputs, SpeechLLMModel
from espnet2_ext.speechllm.search_rules import DecodingOptions, Hypothesis, SearchRules, TextConstraint

# Workspaces (static caches and captured graphs) kept per model, least recently used dropped first.
MAX_WORKSPACES = 4
# The attention implementations whose masks the step builds itself (a 4-D mask is passed through as is).
ATTENTION = ("sdpa", "eager")
# Rows of a step's record: chosen token, its log-probability, eos was the unmasked argmax, eos's log-probability.
_TOKEN, _LOGPROB, _FREE_EOS, _EOS_LOGPROB = range(4)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of ``batch_size``, longest first, so a batch pads and waits little."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class _Workspace:
    """Fixed-address buffers of one (batch, cache length, speech length) shape, and its captured step."""

    def __init__(
        self, model: SpeechLLMModel, inputs: LLMInputs, length: int, memory_length: int, graphs: bool
    ) -> None:
        config = model.llm.config
        batch = inputs.attention_mask.size(0)
        device, dtype = inputs.inputs_embeds.device, inputs.inputs_embeds.dtype
        self.length = length
        self.cache = StaticCache(config=config, max_cache_len=length)  # allocated by :meth:`load`, in the k/v dtype
        self.mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
        self.embeds = torch.zeros(batch, 1, inputs.inputs_embeds.size(-1), dtype=dtype, device=device)
        self.positions = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.slot = torch.zeros((), dtype=torch.long, device=device)  # cache slot of the token fed next
        self.block_eos = torch.zeros(batch, dtype=torch.bool, device=device)
        self.out = torch.zeros(4, batch, device=device)
        self.memory: SpeechMemory | None = None
        if inputs.speech_memory is not None:
            memory = inputs.speech_memory
            padded = lambda t: t.new_zeros(*t.shape[:2], memory_length, t.size(-1))  # noqa: E731
            self.memory = SpeechMemory(
                memory.blocks,
                [padded(k) for k in memory.keys],
                [padded(v) for v in memory.values],
                memory.mask.new_zeros(batch, memory_length),
            )
        self.attention = config._attn_implementation
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capturable = graphs and device.type == "cuda"

    def state(self) -> list[torch.Tensor]:
        """Every buffer a step changes (the cache contents aside: a step only writes the slot it reads)."""
        counters = [layer.cumulative_length for layer in self.cache.layers]
        return [self.mask, self.embeds, self.positions, self.slot, self.out, *counters]

    def load(self, inputs: LLMInputs, prefill: DynamicCache, block_eos: bool) -> None:
        """The prompt's keys/values from ``prefill``, the batch's mask, positions and speech memory (zero-padded)."""
        self.cache.reset()
        prompt = inputs.attention_mask.size(1)
        for layer, source in zip(self.cache.layers, prefill.layers):
            if not layer.is_initialized:
                layer.lazy_initialization(source.keys, source.values)
            layer.keys[:, :, :prompt].copy_(source.keys)
            layer.values[:, :, :prompt].copy_(source.values)
            layer.cumulative_length.fill_(prompt)
        self.mask.zero_()
        self.mask[:, :prompt] = inputs.attention_mask.bool()
        self.positions.copy_(inputs.position_ids[:, -1:])
        self.slot.fill_(prompt)
        self.block_eos.fill_(block_eos)
        if self.memory is not None:
            source = inputs.speech_memory
            length = source.mask.size(1)
            for mine, theirs in zip([*self.memory.keys, *self.memory.values], [*source.keys, *source.values]):
                mine.zero_()
                mine[:, :, :length].copy_(theirs)
            self.memory.mask.zero_()
            self.memory.mask[:, :length] = source.mask

    def take_over(self, old: "_Workspace") -> None:
        """Continue ``old``'s search in this (longer) workspace."""
        for new_layer, old_layer in zip(self.cache.layers, old.cache.layers):
            if not new_layer.is_initialized:
                new_layer.lazy_initialization(old_layer.keys, old_layer.values)
            new_layer.keys.zero_()
            new_layer.values.zero_()
            new_layer.keys[:, :, : old.length].copy_(old_layer.keys)
            new_layer.values[:, :, : old.length].copy_(old_layer.values)
            new_layer.cumulative_length.copy_(old_layer.cumulative_length)
        self.mask.zero_()
        self.mask[:, : old.length] = old.mask
        for mine, theirs in ((self.embeds, old.embeds), (self.positions, old.positions), (self.slot, old.slot),
                             (self.block_eos, old.block_eos), (self.out, old.out)):  # fmt: skip
            mine.copy_(theirs)
        if self.memory is not None:
            for mine, theirs in zip([*self.memory.keys, *self.memory.values, self.memory.mask],
                                    [*old.memory.keys, *old.memory.values, old.memory.mask]):  # fmt: skip
                mine.copy_(theirs)

    def attention_mask(self) -> torch.Tensor:
        """(B, 1, 1, L) mask of the slots each row attends to, in the form the attention implementation takes."""
        mask = self.mask[:, None, None, :]
        if self.attention == "eager":
            return torch.zeros(mask.shape, dtype=self.embeds.dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(self.embeds.dtype).min
            )
        return mask

    def run(self, model: SpeechLLMModel, step: Callable, stats: Counter) -> None:
        """One step: the captured graph's replay where there is one (captured now if needed), else eagerly."""
        if self.graph is None and self.capturable:
            self.capture(model, step, stats)
        if self.graph is not None:
            self.graph.replay()
        else:
            step(model, self)

    def capture(self, model: SpeechLLMModel, step: Callable, stats: Counter) -> None:
        """Warm ``step`` up on a side stream (state restored after), then record it as a CUDA graph."""
        saved = [t.clone() for t in self.state()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(side):
                for _ in range(2):
                    step(model, self)
                    for buffer, value in zip(self.state(), saved):
                        buffer.copy_(value)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step(model, self)
        except RuntimeError as err:  # a step that cannot be captured still decodes, eagerly
            logging.warning("CUDA graph capture of the decode step failed, decoding eagerly: %s", err)
            torch.cuda.synchronize()
            for buffer, value in zip(self.state(), saved):
                buffer.copy_(value)
            self.capturable = False
            stats["capture_failures"] += 1
            return
        self.graph = graph
        stats["captures"] += 1


def _choose(eos_id: int, logits: torch.Tensor, ws: _Workspace) -> None:
    """The reference's token choice for every row, eos forbidden where ``block_eos``, into ``ws.out``."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    free = logprobs.argmax(-1)
    eos_column = eos_id % logprobs.size(-1)  # as the reference's ``logprobs[rows, eos_id]``
    masked = logprobs.clone()
    masked[:, eos_column] = float("-inf")
    best = torch.where(ws.block_eos, masked.argmax(-1), free)
    chosen = logprobs.gather(1, best[:, None])[:, 0]
    ws.out.copy_(torch.stack([best.float(), chosen, (free == eos_id).float(), logprobs[:, eos_column]]))


def _advance(model: SpeechLLMModel, ws: _Workspace) -> None:
    """Make the chosen tokens the next step's input."""
    ws.embeds.copy_(model.embed_tokens(ws.out[_TOKEN].long())[:, None].to(ws.embeds.dtype))
    ws.positions.add_(1)


def decode_step(model: SpeechLLMModel, ws: _Workspace) -> None:
    """Feed the tokens in ``ws.embeds`` at ``ws.slot``, choose the next ones. No host sync (capturable)."""
    ws.mask.index_fill_(1, ws.slot.view(1), True)
    inputs = LLMInputs(ws.embeds, ws.attention_mask(), ws.positions, None, ws.memory)
    logits = model.decode_step(inputs, ws.cache)
    ws.slot.add_(1)
    _choose(model.eos_id, logits, ws)
    _advance(model, ws)


class _Workspaces:
    """A model's workspaces by shape (least recently used dropped beyond :data:`MAX_WORKSPACES`)."""

    def __init__(self) -> None:
        self.spaces: OrderedDict[tuple, _Workspace] = OrderedDict()
        self.stats: Counter = Counter()

    def get(
        self, model: SpeechLLMModel, inputs: LLMInputs, length: int, options: DecodingOptions, kv_dtypes: tuple
    ) -> _Workspace:
        memory = inputs.speech_memory
        memory_length = _round_up(memory.mask.size(1), options.cache_chunk) if memory is not None else 0
        memory_shape = None if memory is None else (memory.keys[0].size(1), memory_length, memory.keys[0].size(3))
        embeds = inputs.inputs_embeds
        attention = model.llm.config._attn_implementation
        key = (options.compile, attention, embeds.size(0), length, memory_shape, embeds.dtype, kv_dtypes, embeds.device)
        if key in self.spaces:
            self.spaces.move_to_end(key)
            return self.spaces[key]
        while len(self.spaces) >= MAX_WORKSPACES:
            self.spaces.popitem(last=False)
        self.spaces[key] = _Workspace(model, inputs, length, memory_length, options.compile != "none")
        self.stats["workspaces"] += 1
        return self.spaces[key]


_WORKSPACES: "weakref.WeakKeyDictionary[SpeechLLMModel, _Workspaces]" = weakref.WeakKeyDictionary()
_COMPILED: dict[str, Callable] = {}


def workspace_stats(model: SpeechLLMModel) -> dict[str, int]:
    """How many workspaces were built, grown and captured (and captures failed) for ``model``."""
    spaces = _WORKSPACES.get(model)
    return dict(spaces.stats) if spaces is not None else {}


def release_workspaces(model: SpeechLLMModel) -> None:
    """Drop ``model``'s static caches and graphs (needed after its parameters are replaced, not copied into)."""
    _WORKSPACES.pop(model, None)


def _step_function(mode: str) -> Callable:
    if mode != "inductor":
        return decode_step
    if mode not in _COMPILED:
        _COMPILED[mode] = torch.compile(decode_step, fullgraph=True, dynamic=False)
    return _COMPILED[mode]


class _Readback:
    """The per-step records, copied to the host in order, each copy waited for only when it is read."""

    def __init__(self, steps: int, batch: int, device: torch.device) -> None:
        self.device = torch.zeros(steps, 4, batch, device=device)
        self.cuda = device.type == "cuda"
        self.host = torch.zeros(steps, 4, batch, pin_memory=self.cuda)
        self.copied = 0
        self.pending: deque[tuple[int, torch.cuda.Event]] = deque()  # (first step, copy done)

    def start(self, upto: int) -> None:
        """Copy the records of the steps produced since the last call (asynchronously on CUDA)."""
        if upto <= self.copied:
            return
        self.host[self.copied : upto].copy_(self.device[self.copied : upto], non_blocking=self.cuda)
        if self.cuda:
            event = torch.cuda.Event()
            event.record()
            self.pending.append((self.copied, event))
        self.copied = upto

    def read(self, lo: int, hi: int) -> list[list[list[float]]]:
        """Records of steps ``lo`` to ``hi`` (already started), once their copies are done."""
        while self.pending and self.pending[0][0] < hi:
            self.pending.popleft()[1].synchronize()
        return self.host[lo:hi].tolist()


@torch.no_grad()
def static_greedy_search(
    model: SpeechLLMModel,
    inputs: LLMInputs,
    max_new_tokens: Sequence[int],
    options: DecodingOptions = DecodingOptions(cache="static"),
    constraint: TextConstraint | None = None,
) -> list[Hypothesis]:
    """Greedy search with the reference's token ids and ending rules (see the module docstring)."""
    attention = model.llm.config._attn_implementation
    if attention not in ATTENTION:
        raise ValueError(f"cache='static' needs the LLM's attn_implementation in {ATTENTION}, it is {attention!r}")
    rules = SearchRules(model.eos_id, options, constraint)
    hyps = [rules.start() for _ in max_new_tokens]
    batch, prompt = inputs.attention_mask.shape
    steps = max(max_new_tokens)
    chunk = options.cache_chunk
    prefill = DynamicCache(config=model.llm.config)  # the reference's prefill, bit for bit
    logits = model.decode_step(inputs, prefill)
    kv_dtypes = (prefill.layers[0].keys.dtype, prefill.layers[0].values.dtype)  # may differ under autocast
    spaces = _WORKSPACES.setdefault(model, _Workspaces())
    ws = spaces.get(model, inputs, _round_up(prompt + min(steps - 1, chunk), chunk), options, kv_dtypes)
    ws.load(inputs, prefill, rules.blocks_eos)
    del prefill
    _choose(model.eos_id, logits, ws)
    _advance(model, ws)
    step = _step_function(options.compile)
    records = _Readback(steps, batch, inputs.inputs_embeds.device)
    records.device[0].copy_(ws.out)
    produced, window = 1, options.sync_every

    def produce(until: int) -> None:
        nonlocal produced, ws
        while produced < until:
            if prompt + produced - 1 >= ws.length:  # the next step writes slot prompt + produced - 1
                grown = spaces.get(model, inputs, ws.length + chunk, options, kv_dtypes)
                grown.take_over(ws)
                ws = grown
                spaces.stats["grown"] += 1
            ws.run(model, step, spaces.stats)
            records.device[produced].copy_(ws.out)
            produced += 1
        records.start(produced)

    live, consumed = list(range(batch)), 0
    produce(min(steps, window))
    while live and consumed < steps:
        produce(min(steps, produced + window))  # the GPU works on the next window while this one is checked
        upto = min(steps, consumed + window)
        for record in records.read(consumed, upto):
            live = _apply_rules(rules, hyps, live, record, max_new_tokens)
        consumed = upto
    return hyps


def _apply_rules(
    rules: SearchRules,
    hyps: list[Hypothesis],
    live: list[int],
    record: list[list[float]],
    max_new_tokens: Sequence[int],
) -> list[int]:
    """Extend every live row by its token of one step; the rows still live after it."""
    correct_eos = rules.blocks_eos
    still = []
    for row in live:
        hyp = hyps[row]
        if correct_eos and hyp.satisfied and record[_FREE_EOS][row]:  # the reference would have allowed eos
            token, logprob = rules.eos_id, record[_EOS_LOGPROB][row]
        else:
            token, logprob = int(record[_TOKEN][row]), record[_LOGPROB][row]
        hyps[row] = rules.extend(hyp, token, logprob, max_new_tokens[row])
        if not hyps[row].end:
            still.append(row)
    return still
