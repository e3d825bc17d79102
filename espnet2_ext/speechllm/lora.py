"""How the base LLM is fine-tuned: LoRA through peft (the paper), fully, or not at all.

The paper gives LoRA as "rank 32 on attention and FFN, 15 million parameters", which cannot both
hold for ChatGLM3-6B: rank 32 on every projection is 59.3M with ChatGLM's fused
``query_key_value`` (66.6M on the split q/k/v of ``GlmForCausalLM``); 15.1M is exactly rank 32 on
``query_key_value`` and ``dense``, the attention projections. ``lora_conf`` therefore takes one key
of ours, ``projections``:

* ``attention`` (the default; the paper's count): q, k, v and o. q, k and v share one ``lora_A``,
  which is what a LoRA on ChatGLM3's fused ``query_key_value`` is once its rows are split
  (``ΔW_qkv = B A`` with ``B = [B_q; B_k; B_v]``), so the adapter has the paper's 15.14M parameters
  at rank 32 (rank 32 on split q/k/v/o with their own ``A`` would be 22.5M). Each projection
  keeps its own dropout mask on the shared ``A``'s input, a negligible difference to the fused layer.
* ``all``: every attention and FFN projection (q, k, v, o, gate_up, down), each its own ``A``:
  66.6M at rank 32, the text's reading.

The other keys are peft ``LoraConfig`` fields (defaults: ``r`` 32, ``lora_alpha`` 64, i.e. the usual
scale alpha/r = 2, ``lora_dropout`` 0.05); ``target_modules`` replaces ``projections``.

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
LORA_PROJECTIONS: dict[str, tuple[str, ...]] = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),
}
SHARED_A = ("q_proj", "k_proj", "v_proj")  # one lora_A: the fused query_key_value of ChatGLM3
LORA_DEFAULTS: dict[str, Any] = {"r": 32, "lora_alpha": 64, "lora_dropout": 0.05, "bias": "none"}


def resolve_lora_conf(lora_conf: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
    """``lora_conf`` -> (peft ``LoraConfig`` fields, whether q/k/v share one ``lora_A``)."""
    conf = {**LORA_DEFAULTS, **(lora_conf or {})}
    projections = conf.pop("projections", None)
    if "target_modules" in conf:
        if projections is not None:
            raise ValueError(f"lora_conf has both projections={projections!r} and target_modules: give one")
        return conf, False
    projections = projections or "attention"
    if projections not in LORA_PROJECTIONS:
        raise ValueError(f"lora_conf projections must be one of {sorted(LORA_PROJECTIONS)}, got {projections!r}")
    return {**conf, "target_modules": list(LORA_PROJECTIONS[projections])}, projections == "attention"


def configure_llm_finetuning(llm: nn.Module, mode: str, lora_conf: dict[str, Any] | None = None) -> None:
    """Set which LLM parameters train: inject LoRA (``lora``), unfreeze all (``full``) or none (``frozen``)."""
    if mode not in LLM_FINETUNE_MODES:
        raise ValueError(f"llm_finetune must be one of {LLM_FINETUNE_MODES}, got {mode!r}")
    if lora_conf and mode != "lora":
        raise ValueError(f"lora_conf {lora_conf} given but llm_finetune is {mode!r}")
    llm.requires_grad_(mode == "full")
    if mode != "lora":
        return
    peft_conf, shared_a = resolve_lora_conf(lora_conf)
    inject_adapter_in_model(LoraConfig(**peft_conf), llm)
    if shared_a:
        share_qkv_lora_a(llm)


def share_qkv_lora_a(llm: nn.Module) -> int:
    """Make k_proj's and v_proj's ``lora_A`` the very module of q_proj's in every attention layer
    (one parameter, so optimisers, checkpoints and counts see it once); returns the layers tied."""
    tied = 0
    for module in llm.modules():
        projections = [getattr(module, name, None) for name in SHARED_A]
        if all(p is not None and hasattr(p, "lora_A") for p in projections):
            query = projections[0]
            for other in projections[1:]:
                for adapter, layer in query.lora_A.items():
                    other.lora_A[adapter] = layer
            tied += 1
    return tied


def is_lora_parameter(name: str) -> bool:
    return "lora_" in name
