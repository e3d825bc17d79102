"""Where a job computes: the device an ``--ngpu``/``--device`` option asks for, and the dtype that goes with it.

A job asking for a GPU on a machine that shows it none stops with one line saying so, rather than
running for hours on the CPU: the dispatcher hands a ``--gpu 1`` job its GPU through
``CUDA_VISIBLE_DEVICES``, so a job that sees none was started on the wrong machine or with the
wrong torch. ``auto`` precision is bfloat16 on a GPU (Whisper and the LLM run natively in it, at
half the memory) and float32 on the CPU (whose bfloat16 matmuls are slow).
"""

from __future__ import annotations

import os

import torch

from espnet2_ext.checkpoint_io import DTYPES
from espnet2_ext.errors import UserError

DTYPE_CHOICES = ("auto", *sorted(DTYPES))


def check_device(device: str, option: str) -> str:
    """``device`` when this machine has it; a CUDA device without CUDA is an error naming ``option``."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        shown = "unset" if visible is None else repr(visible)
        built = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", built without CUDA")
        raise UserError(
            f"{option} asks for a GPU, but torch sees none (CUDA_VISIBLE_DEVICES {shown}, {built}): "
            "run the job on a GPU machine (the dispatcher's --gpu 1), or on the CPU"
        )
    return device


def device_for_ngpu(ngpu: int) -> str:
    """``cpu`` for ``--ngpu 0``, ``cuda`` (the job's one GPU) for ``--ngpu 1``."""
    if ngpu not in (0, 1):
        raise UserError(f"--ngpu {ngpu}: a job decodes on the CPU (0) or one GPU (1); run more jobs for more GPUs")
    return check_device("cuda", f"--ngpu {ngpu}") if ngpu else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` -> bfloat16 on a GPU, float32 on the CPU; any other name as it is."""
    if dtype not in DTYPE_CHOICES:
        raise UserError(f"dtype must be one of {DTYPE_CHOICES}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    return "bfloat16" if torch.device(device).type == "cuda" else "float32"
