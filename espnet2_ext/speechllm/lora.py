"""How the base LLM is fine-tuned: LoRA through peft (the paper), fully, or not at all.

LoRA defaults: rank 32 (paper) on every attention and FFN projection of the Glm layers,
``lora_alpha`` 64 (scale alpha/r = 2, the usual choice for r = 32) and dropout 0.05. On ChatGLM3-6B
this is 66.6M parameters (59.3M with ChatGLM's fused ``query_key_value``); the paper's "15M"
matches rank 32 on the attention projections alone, or rank 8 on all of them.

``full`` trains every LLM weight; the mini recipe uses it because its tiny LLM is random: LoRA
only adds a low-rank update to frozen weights, and a random frozen base has no language to adapt.
The adapters are injected into the ``GlmForCausalLM`` in place (``inject_adapter_in_model``), so
the LLM stays a plain transformers model and the cross-attention modules, which live in the
connector, never receive LoRA.
"""

from __future__ import annotations

from typing import Any

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

LLM_FINETUNE_MODES: tuple[str, ...] = ("lora", "full", "frozen")
LORA_DEFAULTS: dict[str, Any] = {
    "r": 32,
    "lora_alpha": 64,
    "lora_dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"],
    "bias": "none",
}


def configure_llm_finetuning(llm: nn.Module, mode: str, lora_conf: dict[str, Any] | None = None) -> None:
    """Set which LLM parameters train: inject LoRA (``lora``), unfreeze all (``full``) or none (``frozen``)."""
    if mode not in LLM_FINETUNE_MODES:
        raise ValueError(f"llm_finetune must be one of {LLM_FINETUNE_MODES}, got {mode!r}")
    if lora_conf and mode != "lora":
        raise ValueError(f"lora_conf {lora_conf} given but llm_finetune is {mode!r}")
    llm.requires_grad_(mode == "full")
    if mode == "lora":
        inject_adapter_in_model(LoraConfig(**{**LORA_DEFAULTS, **(lora_conf or {})}), llm)


def is_lora_parameter(name: str) -> bool:
    return "lora_" in name
