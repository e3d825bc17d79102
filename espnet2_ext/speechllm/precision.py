"""Mixed precision for a model that is mostly frozen: frozen weights in ``frozen_dtype``, trainable ones in fp32.

The frozen Whisper encoder and base LLM are held in ``frozen_dtype`` (bfloat16 at full size:
12.5 GB instead of 25 GB for ChatGLM3-6B); the trainable parameters (connector, γ, gates, LoRA
A/B; the whole LLM in ``full`` mode) and so AdamW's states stay in fp32, so an update of
lr-sized steps is not lost to bf16 rounding. The forward pass runs under autocast to
``frozen_dtype`` (bf16 matmuls, fp32 reductions and loss), on GPU and on CPU alike; with
``float32`` nothing is cast and autocast is off.

ESPnet's ``train_dtype`` casts the whole model (``model.to(dtype=...)``), which would upcast the
frozen weights; :meth:`SpeechLLMModel.to` therefore applies a dtype to trainable parameters only
(:func:`to_keeping_frozen_dtype`), and :func:`check_precision_args` insists on ``train_dtype
float32``. ``float16`` needs ESPnet's loss scaler (``use_amp true``); bfloat16 needs none.
"""

from __future__ import annotations

import argparse
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import nn

from espnet2_ext.checkpoint_io import DTYPES, stored_float_dtype
from espnet2_ext.errors import UserError

FROZEN_DTYPES: tuple[str, ...] = tuple(DTYPES)


def autocast_to(dtype: torch.dtype, device_type: str) -> AbstractContextManager:
    """Autocast to ``dtype`` on ``device_type``; a no-op for float32."""
    return torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32)


def keep_trainable_fp32(module: nn.Module) -> None:
    """Cast every trainable floating-point parameter to fp32 in place (peft creates LoRA in the base dtype)."""
    for param in module.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()


def to_keeping_frozen_dtype(module: nn.Module, *args, **kwargs) -> nn.Module:
    """``module.to(...)`` where a dtype applies to trainable parameters only; frozen ones and buffers keep theirs."""
    device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        trainable = isinstance(tensor, nn.Parameter) and tensor.requires_grad and tensor.is_floating_point()
        return tensor.to(device, dtype if trainable else None, non_blocking)

    return module._apply(convert)


def check_precision_args(args: argparse.Namespace) -> None:
    """Refuse precision settings that would cast the frozen model or lose fp16 gradients."""
    if args.train_dtype != "float32":
        raise UserError(
            f"train_dtype {args.train_dtype}: keep train_dtype float32 (trainable weights and optimizer states "
            "in fp32) and set frozen_dtype for the frozen Whisper/LLM weights"
        )
    if args.frozen_dtype == "float16" and not args.use_amp:
        raise UserError("frozen_dtype float16 needs use_amp true (ESPnet's loss scaler); or use bfloat16")


def check_stored_dtype(path: str | Path, wanted: torch.dtype, what: str) -> None:
    """Refuse an fp32 checkpoint directory when a 16-bit frozen copy is asked: convert it once instead."""
    if wanted == torch.float32 or not Path(path).is_dir():
        return
    stored = stored_float_dtype(path)
    if stored == torch.float32:
        name = str(wanted).removeprefix("torch.")
        raise UserError(
            f"{path}: the {what} is stored in float32 but frozen_dtype is {name}; write a {name} copy once "
            f"(python -m espnet2_ext.bin.convert_chatglm3 {path} NEW_DIR --dtype {name}) and point to it, "
            "or set frozen_dtype float32"
        )
