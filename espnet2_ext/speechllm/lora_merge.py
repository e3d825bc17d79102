"""LoRA folded into the base LLM for decoding: ``W <- W + scale * B A``, then plain ``Linear`` layers again.

A merged model computes the same function with one matmul per projection instead of three, which is
what peft's ``merge_and_unload`` does for a ``PeftModel``. The adapters here are injected with
``inject_adapter_in_model`` (no ``PeftModel`` around them), so each LoRA layer is merged with its
own ``merge`` and replaced by its base layer. The task holds LoRA weights in float32 also over a
bfloat16 base (:func:`~espnet2_ext.speechllm.precision.keep_trainable_fp32`), so the update
``B A`` is formed in float32 and rounded once, when it is added to the base weight.
"""

from __future__ import annotations

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

ADAPTER = "default"  # the adapter name inject_adapter_in_model gives


def merge_lora(model: nn.Module) -> int:
    """Merge every LoRA layer of ``model`` into its base layer and put the base layer in its place;
    returns how many layers were merged."""
    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, layer in layers:
        layer.merge(safe_merge=False, adapter_names=[ADAPTER])  # in place: the float32 update is rounded once
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    return len(layers)
