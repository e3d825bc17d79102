"""ESPnet training with every checkpoint loaded as ``weights_only``, and a bad checkpoint named.

ESPnet 202511 loads ``checkpoint.pth`` (``Trainer.resume``), ``--init_param`` files
(``load_pretrained_model``) and the epochs it averages (``average_nbest_models``) with
``torch.load(weights_only=False)``, which runs whatever a pickle asks for. :class:`SafeLoadingTask`,
mixed into an ``AbsTask`` before it, makes every ``torch.load`` of training ``weights_only`` —
through PyTorch's own switch, ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` — and allows beyond tensors and
plain containers only :data:`ESPNET_CHECKPOINT_GLOBALS`, what ESPnet's ``checkpoint.pth`` holds.
A checkpoint that cannot be loaded (missing, truncated, not a checkpoint, holding other pickled
objects, not fitting the model) raises :class:`~espnet2_ext.checkpoint_io.CheckpointError`
naming the file and what to do. No ESPnet code is copied: :class:`SafeTrainer` wraps
``Trainer.resume``, and ``--init_param`` goes through ESPnet's ``load_pretrained_model``, which
the task's ``main_worker`` wraps while it runs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from espnet2.tasks import abs_task
from espnet2.torch_utils.load_pretrained_model import load_pretrained_model
from espnet2.train.trainer import Trainer

from espnet2_ext.checkpoint_io import CheckpointError

FORCE_WEIGHTS_ONLY_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
# ESPnet's checkpoint.pth: the reporter's per-epoch stats are numpy float64 scalars (np.nanmean)
# and datetime.timedelta (epoch time); schedulers may keep numpy float64 learning rates. Model,
# optimizer, scheduler and AMP-scaler states are otherwise tensors, numbers, strings and containers,
# which weights_only loads without help. Found by saving a real checkpoint (tests/test_checkpoint_loading.py).
ESPNET_CHECKPOINT_GLOBALS = [np._core.multiarray.scalar, np.dtype, np.dtypes.Float64DType, datetime.timedelta]
_MAX_DETAIL = 300


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Inside, every ``torch.load`` is ``weights_only`` (even when asked otherwise) with ESPnet's globals.

    Nestable: the allowed globals and the variable are restored as they were (torch's own
    ``safe_globals`` context would drop the globals an enclosing one had allowed).
    """
    previous_env = os.environ.get(FORCE_WEIGHTS_ONLY_ENV)
    previous_globals = torch.serialization.get_safe_globals()
    os.environ[FORCE_WEIGHTS_ONLY_ENV] = "1"
    torch.serialization.add_safe_globals(ESPNET_CHECKPOINT_GLOBALS)
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(previous_globals)
        if previous_env is None:
            del os.environ[FORCE_WEIGHTS_ONLY_ENV]
        else:
            os.environ[FORCE_WEIGHTS_ONLY_ENV] = previous_env


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def describe_load_error(err: BaseException) -> str:
    """Why a checkpoint could not be loaded, in a few words (PyTorch's messages run over many lines)."""
    text = " ".join(str(err).split())
    if isinstance(err, OSError):
        return err.strerror or text
    if isinstance(err, EOFError):
        return "empty or truncated (ended early)"
    if "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL \S+|but got <class '[^']+'>", text)
        what = found.group(0) if found else "an object weights_only does not allow"
        return f"it holds pickled objects other than tensors and training state ({what}), refused"
    if "PytorchStreamReader" in text:
        return f"truncated or corrupt ({text.split('. ')[0]})"
    if isinstance(err, (pickle.UnpicklingError, KeyError)):
        return f"not a PyTorch checkpoint ({type(err).__name__}: {_clip(text)})"
    if isinstance(err, ValueError) or "Error(s) in loading state_dict" in text:
        return f"does not fit the model ({_clip(text)})"
    return _clip(text)


@contextmanager
def named_checkpoint_errors(path: str | Path, advice: str) -> Iterator[None]:
    """Turn a failure to load ``path`` into one :class:`CheckpointError` naming it, followed by ``advice``."""
    try:
        yield
    except (OSError, EOFError, pickle.UnpicklingError, RuntimeError, KeyError, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path}: cannot load checkpoint: {describe_load_error(err)}; {advice}") from err


class SafeTrainer(Trainer):
    """ESPnet's Trainer, resuming with ``weights_only`` and naming a checkpoint it cannot resume from."""

    @staticmethod
    def resume(checkpoint: str | Path, *args, **kwargs) -> None:
        with weights_only_loads(), named_checkpoint_errors(checkpoint, "delete it or pass --resume false"):
            Trainer.resume(checkpoint, *args, **kwargs)


def load_init_param(init_param: str, model: torch.nn.Module, ignore_init_mismatch: bool, map_location: str = "cpu") -> None:
    """ESPnet's ``load_pretrained_model`` (``path[:src_key[:dst_key[:excludes]]]``), ``weights_only``, file named."""
    path = init_param.split(":", 1)[0]
    with weights_only_loads(), named_checkpoint_errors(path, "check --init_param"):
        load_pretrained_model(init_param, model, ignore_init_mismatch, map_location)


class SafeLoadingTask:
    """Mix into an ``AbsTask`` (first base): its training loads every checkpoint ``weights_only``."""

    trainer = SafeTrainer

    @classmethod
    def main_worker(cls, args: argparse.Namespace) -> None:
        # ESPnet's main_worker calls abs_task.load_pretrained_model for --init_param: route it here
        # while training runs (averaging the best epochs at the end is covered by weights_only_loads).
        espnet_loader = abs_task.load_pretrained_model
        abs_task.load_pretrained_model = load_init_param
        try:
            with weights_only_loads():
                super().main_worker(args)
        finally:
            abs_task.load_pretrained_model = espnet_loader
