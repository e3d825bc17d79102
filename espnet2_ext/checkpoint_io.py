"""Reading and writing checkpoint files: the one place that touches weights on disk.

Readers: :func:`load_state_file` (one ``torch.save`` file, ``weights_only``), :func:`read_state_dict`
(a directory's sharded or single ``pytorch_model*.bin`` / ``model*.safetensors``, as one dict).
Models are loaded by streaming: :func:`iter_checkpoint` yields a directory's tensors one shard at a
time from memory-mapped files, :func:`checkpoint_names` and :func:`stored_float_dtype` read only
headers, and :func:`assign_checked` puts each tensor, cast to the target dtype and moved to the
target device, straight into a model built on the meta device (strict key and shape check, one
error listing what is wrong), so no full copy of the checkpoint (in its stored dtype, or in fp32)
ever sits in host memory.
Writer: :func:`save_state_dict_shards` (shards plus an index, as transformers writes them).
Every error names the file. :data:`DTYPES` are the weight dtypes a ``--dtype`` option takes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

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


def read_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (sharded with an index json, or one file), on CPU.

    ``torch.save`` files stay memory-mapped; large models should stream with :func:`iter_checkpoint`.
    """
    return dict(iter_checkpoint(directory))


def _short(keys: list) -> str:
    shown = ", ".join(map(str, keys[:_LISTED]))
    return f"[{shown}{f', ... ({len(keys)} in all)' if len(keys) > _LISTED else ''}]"


def checkpoint_files(directory: str | Path) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files of a checkpoint directory and, when sharded, its index's ``weight_map``."""
    directory = Path(directory)
    for index_name in _INDEX_FILES:
        index_file = directory / index_name
        if index_file.is_file():
            try:
                weight_map: dict[str, str] = json.loads(index_file.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise CheckpointError(f"{index_file}: not a checkpoint index with a 'weight_map' ({err})") from err
            shards = [directory / shard for shard in sorted(set(weight_map.values()))]
            for shard in shards:
                if not shard.is_file():
                    raise FileNotFoundError(f"{index_file}: shard {shard.name} is missing")
            return shards, weight_map
    for single in _SINGLE_FILES:
        if (directory / single).is_file():
            return [directory / single], None
    found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else "not a directory"
    raise FileNotFoundError(
        f"{directory}: no checkpoint ({', '.join(_INDEX_FILES + _SINGLE_FILES)}) found; contents: {found}"
    )


def _unreadable(path: Path, err: Exception) -> CheckpointError:
    return CheckpointError(f"{path}: unreadable checkpoint (truncated or corrupt?): {err}")


def _load_mmap(path: Path) -> dict[str, torch.Tensor]:
    """A ``torch.save`` weight file, memory-mapped (legacy pre-zip files are read whole)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def _iter_file(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of one weight file, each read from disk when it is reached."""
    try:
        if path.suffix == ".safetensors":
            handle = safe_open(str(path), framework="pt", device="cpu")
            names = list(handle.keys())
        else:
            state = _load_mmap(path)
            names = list(state)
    except Exception as err:  # safetensors and torch raise their own error types
        raise _unreadable(path, err) from err
    for name in names:
        try:
            tensor = handle.get_tensor(name) if path.suffix == ".safetensors" else state[name]
        except Exception as err:
            raise _unreadable(path, err) from err
        yield name, tensor


def checkpoint_names(directory: str | Path) -> list[str]:
    """Every tensor name of a checkpoint directory, from the index or the files' headers (no weights read)."""
    files, weight_map = checkpoint_files(directory)
    if weight_map is not None:
        return sorted(weight_map)
    if files[0].suffix == ".safetensors":
        with safe_open(str(files[0]), framework="pt", device="cpu") as handle:
            return sorted(handle.keys())
    return sorted(_load_mmap(files[0]))


def stored_float_dtype(directory: str | Path) -> torch.dtype | None:
    """The dtype the first floating-point tensor of a checkpoint directory is stored in (headers only)."""
    files, _ = checkpoint_files(directory)
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for name in handle.keys():
                    dtype = _SAFETENSORS_DTYPES.get(handle.get_slice(name).get_dtype())
                    if dtype is not None and dtype.is_floating_point:
                        return dtype
        else:
            for tensor in _load_mmap(path).values():  # memory-mapped: dtypes come from the header
                if tensor.is_floating_point():
                    return tensor.dtype
    return None


_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def iter_checkpoint(directory: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of a checkpoint directory, one memory-mapped shard at a time.

    A shard's pages are released when the iteration moves on, so reading never holds more than
    one shard beyond what the consumer keeps. A sharded directory's index must list exactly the
    tensors its shards hold.
    """
    files, weight_map = checkpoint_files(directory)
    seen: set[str] = set()
    for path in files:
        for name, tensor in _iter_file(path):
            seen.add(name)
            yield name, tensor
    if weight_map is not None:
        not_found, not_indexed = sorted(set(weight_map) - seen), sorted(seen - set(weight_map))
        if not_found or not_indexed:
            index = next(p for p in (Path(directory) / n for n in _INDEX_FILES) if p.is_file())
            raise CheckpointError(
                f"{index}: index and shards disagree; in the index but in no shard: "
                f"{_short(not_found)}; in a shard but not in the index: {_short(not_indexed)}"
            )


def assign_checked(
    module: torch.nn.Module,
    tensors: Iterable[tuple[str, torch.Tensor]],
    source: str,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> None:
    """Put each ``(name, tensor)`` into ``module`` (built on the meta device) as it arrives.

    Floating-point tensors are cast to ``dtype``; every tensor is copied to ``device`` on its own,
    so host memory holds at most the tensor being converted beyond the model itself (when the
    model lives on the host). Missing, unexpected and mis-shaped keys are all listed in one error
    naming ``source``; nothing is assigned for a mis-shaped key.
    """
    expected = {name: (tensor.shape, tensor.requires_grad) for name, tensor in module.state_dict(keep_vars=True).items()}
    assigned: set[str] = set()
    unexpected: list[str] = []
    mismatched: list[str] = []
    for name, tensor in tensors:
        if name not in expected:
            unexpected.append(name)
            continue
        shape, requires_grad = expected[name]
        if tensor.shape != shape:
            mismatched.append(f"{name}: checkpoint {tuple(tensor.shape)} vs model {tuple(shape)}")
            continue
        cast = dtype if dtype is not None and tensor.is_floating_point() else None
        value = tensor.to(device=device, dtype=cast, copy=True)
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        if leaf in owner._parameters:
            owner._parameters[leaf] = torch.nn.Parameter(value, requires_grad=requires_grad)
        else:
            owner._buffers[leaf] = value
        assigned.add(name)
    missing = sorted(set(expected) - assigned - {m.split(":")[0] for m in mismatched})
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{source}: checkpoint does not match the model; missing keys {_short(missing)}; "
            f"unexpected keys {_short(sorted(unexpected))}; shape mismatches {_short(sorted(mismatched))}"
        )


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
