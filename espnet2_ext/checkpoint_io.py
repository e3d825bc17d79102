"""Reading and writing checkpoint files: the one place that touches weights on disk.

Readers: :func:`load_state_file` (one ``torch.save`` file, ``weights_only``), :func:`read_state_dict`
(a directory's sharded or single ``pytorch_model*.bin`` / ``model*.safetensors``) and
:func:`load_checked_state_dict` (strict key and shape check with an error that lists what is
wrong). Writer: :func:`save_state_dict_shards` (shards plus an index, as transformers writes
them). Every error names the file. :data:`DTYPES` are the weight dtypes a ``--dtype`` option takes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers.modeling_utils import load_state_dict as _load_checkpoint_file

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Index files and single files, in order of preference, as transformers writes them.
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
_LISTED = 20


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message starts with the file."""


def load_state_file(path: str | Path, mmap: bool = False) -> dict:
    """The dict in one ``torch.save`` file (tensors and plain data only, on CPU); a broken file is named."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises RuntimeError, pickle.UnpicklingError, EOFError, ...
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or not a torch.save file?): {err}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(state).__name__}")
    return state


def _load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        return _load_checkpoint_file(path, weights_only=True)
    except Exception as err:  # safetensors and torch raise their own error types
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or corrupt?): {err}") from err


def read_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (sharded with an index json, or one file), on CPU."""
    directory = Path(directory)
    for index_name in _INDEX_FILES:
        index_file = directory / index_name
        if index_file.is_file():
            return _read_sharded(index_file)
    for single in _SINGLE_FILES:
        if (directory / single).is_file():
            return _load_weights_file(directory / single)
    found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else "not a directory"
    raise FileNotFoundError(
        f"{directory}: no checkpoint ({', '.join(_INDEX_FILES + _SINGLE_FILES)}) found; contents: {found}"
    )


def _read_sharded(index_file: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map: dict[str, str] = json.loads(index_file.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as err:
        raise CheckpointError(f"{index_file}: not a checkpoint index with a 'weight_map' ({err})") from err
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_file = index_file.parent / shard
        if not shard_file.is_file():
            raise FileNotFoundError(f"{index_file}: shard {shard} is missing")
        state.update(_load_weights_file(shard_file))
    not_found = sorted(set(weight_map) - set(state))
    not_indexed = sorted(set(state) - set(weight_map))
    if not_found or not_indexed:
        raise CheckpointError(
            f"{index_file}: index and shards disagree; in the index but in no shard: "
            f"{_short(not_found)}; in a shard but not in the index: {_short(not_indexed)}"
        )
    return state


def _short(keys: list) -> str:
    shown = ", ".join(map(str, keys[:_LISTED]))
    return f"[{shown}{f', ... ({len(keys)} in all)' if len(keys) > _LISTED else ''}]"


def load_checked_state_dict(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, dtype: torch.dtype | None = None
) -> None:
    """Load ``state`` into ``module`` (possibly on the meta device: tensors are assigned), refusing any
    missing or unexpected key and any shape mismatch, all listed in one error naming ``source``."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{source}: checkpoint does not match the model; missing keys {_short(missing)}; "
            f"unexpected keys {_short(unexpected)}; shape mismatches {_short(mismatched)}"
        )
    cast = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in state.items()}
    module.load_state_dict(cast, strict=True, assign=True)


def save_state_dict_shards(
    state: Mapping[str, torch.Tensor], out_dir: Path, shard_size: int, safetensors: bool
) -> None:
    """Write ``state`` in shards of at most ``shard_size`` bytes (plus an index when more than one)."""
    stem, ext = ("model", "safetensors") if safetensors else ("pytorch_model", "bin")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.contiguous()
        size += nbytes
    if len(shards) == 1:
        names = [f"{stem}.{ext}"]
    else:
        names = [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{ext}" for i in range(len(shards))]
    for shard, name in zip(shards, names):
        if safetensors:
            save_file(shard, out_dir / name, metadata={"format": "pt"})
        else:
            torch.save(shard, out_dir / name)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {k: name for shard, name in zip(shards, names) for k in shard},
        }
        (out_dir / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2) + "\n")
