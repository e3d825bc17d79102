"""What the trained connectors do (paper Fig. 2): cross-attention gates per layer, attention on speech per layer.

* :func:`gate_values` — ``tanh(g_i)`` of every layer's gated cross-attention, read from a checkpoint
  (no model needed); one curve per training phase gives Fig. 2a.
* :func:`speech_attention` — decoder-only: the share of self-attention the generated tokens put on
  the speech tokens (history speech, γ and current speech), per layer, averaged over heads,
  generated tokens and utterances. The model first decodes greedily, then the output is fed back
  (teacher forcing) through the LLM with eager attention and ``output_attentions``. Curves for
  ASR/NER with 0/1/2 history utterances give Fig. 2b.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import torch  # noqa: E402

from espnet2_ext.api import Request, Speech2TextNER, output_format  # noqa: E402
from espnet2_ext.speechllm.decoding import DecodingOptions, greedy_search  # noqa: E402
from espnet2_ext.speechllm.espnet_model import IGNORE_ID  # noqa: E402

_GATE_KEY = re.compile(r"connector\.blocks\.(\d+)\.gate")


def gate_values(state: Mapping[str, torch.Tensor]) -> list[float]:
    """``tanh(g_i)`` for layers i = 0…L-1 of an encoder-decoder checkpoint's state dict."""
    gates = {int(m.group(1)): float(torch.tanh(v.float())) for k, v in state.items() if (m := _GATE_KEY.fullmatch(k))}
    if not gates:
        raise ValueError("no cross-attention gates (connector.blocks.N.gate) in the checkpoint; not encoder-decoder?")
    if sorted(gates) != list(range(len(gates))):
        raise ValueError(f"gate layers {sorted(gates)} are not 0..{len(gates) - 1}")
    return [gates[i] for i in range(len(gates))]


@torch.no_grad()
def speech_attention(engine: Speech2TextNER, requests: Sequence[Request], task: str) -> list[float]:
    """Per layer: mean attention mass of the generated tokens on the speech tokens (decoder-only)."""
    model = engine.model
    if model.uses_cross_attention:
        raise ValueError("speech attention is defined for the decoder-only model (speech in the LLM input)")
    fmt = output_format(task, max(len(r.history) for r in requests), engine.trained_tasks)
    inputs, speech, _, limits = engine.llm_inputs(requests, fmt)
    hyps = greedy_search(model, inputs, limits, DecodingOptions(), engine.constraint(fmt))
    texts = [torch.tensor(h.ids + [model.eos_id]) for h in hyps]
    text = torch.nn.utils.rnn.pad_sequence(texts, batch_first=True).to(inputs.attention_mask.device)
    lengths = torch.tensor([len(t) for t in texts], device=text.device)
    prompts = [engine.prompt_ids(fmt, r.history_texts)[0] for r in requests]
    prompt = torch.nn.utils.rnn.pad_sequence([torch.tensor(p) for p in prompts], batch_first=True).to(text.device)
    prompt_lengths = torch.tensor([len(p) for p in prompts], device=text.device)
    forced = model.build_inputs(speech, prompt, prompt_lengths, text, lengths)
    previous = model.llm.config._attn_implementation
    model.llm.set_attn_implementation("eager")
    try:
        attentions = model.llm.model(
            inputs_embeds=forced.inputs_embeds, attention_mask=forced.attention_mask,
            position_ids=forced.position_ids, output_attentions=True, use_cache=False,
        ).attentions
    finally:
        model.llm.set_attn_implementation(previous)
    prefix = len(model.prefix_ids)
    per_layer = torch.zeros(len(attentions))
    for b in range(len(requests)):
        start = int((forced.attention_mask[b] == 0).sum()) + prefix
        speech_keys = slice(start, start + int(speech.lengths[b]))
        queries = (forced.labels[b] != IGNORE_ID).nonzero().flatten()
        for layer, weights in enumerate(attentions):
            per_layer[layer] += weights[b][:, queries, speech_keys].float().sum(-1).mean().item()
    return (per_layer / len(requests)).tolist()


def plot_curves(curves: Mapping[str, Sequence[float]], ylabel: str, title: str, path: Path) -> Path:
    """One line per curve over the layer index, saved as PNG."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        axis.plot(range(1, len(values) + 1), values, marker="o", label=name)
    axis.set_xlabel("layer")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
