"""Trainable/total parameter counts per component (whisper, connector, llm base, lora), for logs and count_params."""

from __future__ import annotations

from torch import nn

from espnet2_ext.speechllm.lora import is_lora_parameter

COMPONENTS: tuple[str, ...] = ("whisper", "connector", "llm_base", "lora")


def _component(name: str) -> str:
    if is_lora_parameter(name):
        return "lora"
    head = name.split(".", 1)[0]
    return {"encoder": "whisper", "connector": "connector", "llm": "llm_base"}.get(head, head)


def parameter_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """``{component: {"trainable": n, "total": n}}`` plus an ``all`` row; works on the meta device."""
    counts = {name: {"trainable": 0, "total": 0} for name in (*COMPONENTS, "all")}
    for name, param in model.named_parameters():
        for row in (counts.setdefault(_component(name), {"trainable": 0, "total": 0}), counts["all"]):
            row["total"] += param.numel()
            row["trainable"] += param.numel() if param.requires_grad else 0
    return counts


def format_parameter_table(counts: dict[str, dict[str, int]]) -> str:
    """A fixed-width text table of :func:`parameter_counts` (millions, 1 decimal)."""
    lines = [f"{'component':<10} {'trainable':>12} {'total':>12}"]
    for name, row in counts.items():
        lines.append(f"{name:<10} {row['trainable'] / 1e6:>11.1f}M {row['total'] / 1e6:>11.1f}M")
    return "\n".join(lines)
