"""Measured memory of one training step on CPU: what ``torch.cuda.max_memory_allocated`` would say on a GPU.

:func:`measure_step` runs forward + backward of a model on a batch and reports, in bytes:

* ``peak``: the most tensor memory alive at once during the step, above what existed before it
  (every op's outputs are tracked through a ``TorchDispatchMode``; a storage counts until it is
  freed, views and in-place results are not counted twice; the model's own parameters and buffers
  are excluded, their autocast copies and the gradients are not);
* ``saved``: the distinct storages autograd saved for the backward pass at the end of the forward
  (``saved_tensors_hooks``), parameters excluded;
* ``grads``: the bytes of the parameter gradients.

It backs ``plan_memory``'s activation model (``tests/test_memory_plan.py``, ``bench/plan_vs_measured.py``).
"""

from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of storages created by ops run under the mode and still alive."""

    def __init__(self, exclude: set[int]) -> None:
        super().__init__()
        self.exclude = exclude
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _collect(self) -> None:
        dead = [key for key, (ref, _) in self.live.items() if ref.expired()]
        for key in dead:
            self.current -= self.live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._collect()
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key in self.exclude or key in self.live or storage.nbytes() == 0:
                continue
            self.live[key] = (StorageWeakRef(storage), storage.nbytes())
            self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def measure_step(model: torch.nn.Module, batch: dict) -> dict[str, int]:
    """Forward (``loss = model(**batch)[0]``) and backward on CPU; see the module docstring."""
    exclude = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.zero_grad(set_to_none=True)
    probe = LiveTensorBytes(exclude)
    with probe:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(**batch)[0]
        saved_bytes = sum(saved.values())
        loss.backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    return {"peak": probe.peak, "saved": saved_bytes, "grads": grads}
