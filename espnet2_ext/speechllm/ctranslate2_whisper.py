"""CTranslate2 Whisper checkpoints (faster-whisper's ``model.bin``) as Hugging Face Whisper directories.

Many users hold Whisper only as a faster-whisper model directory (``model.bin``,
``config.json``, ``tokenizer.json``), while this project loads Whisper from a
Hugging Face directory or an OpenAI ``.pt``. :func:`read_model_bin` parses
CTranslate2's binary format, :func:`ctranslate2_to_hf_whisper` maps its
variables onto ``WhisperForConditionalGeneration`` strictly (every variable is
used or deliberately ignored, every parameter is filled, every shape checked)
and :func:`convert_ctranslate2_whisper` writes the directory with
``save_pretrained``, plus ``preprocessor_config.json`` and ``tokenizer.json``.

Binary version 6, little-endian: u32 version; spec name; u32 spec revision; u32
variable count; per variable: name, u8 rank, rank x u32 dims, u8 dtype, u32 byte
count, raw data; then u32 alias count and (alias, target) name pairs. A string
is a u16 length (counting a trailing NUL) followed by its bytes.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

BINARY_VERSION = 6
SPEC_NAME = "WhisperSpec"
# CTranslate2's DataType enum.
DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}
# Scalars of the Whisper spec: the value transformers' Whisper implies, or None when the value is read
# elsewhere (num_heads) or only serves CTranslate2's guided alignment (alignment_*: config.json's
# alignment_heads are used for word timestamps instead).
_SCALARS = {
    "encoder/num_heads": None,
    "decoder/num_heads": None,
    "decoder/alignment_heads": None,
    "decoder/alignment_layer": None,
    "decoder/activation": 3,  # GELU
    "decoder/pre_norm": 1,
    "decoder/alibi": 0,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
}
_TIED = ("decoder/projection/weight", "decoder/embeddings/weight")
# OpenAI's rule (whisper/model.py): multilingual vocabularies have at least 51,865 tokens.
_MULTILINGUAL_VOCAB = 51865
_LISTED = 20


@dataclass(frozen=True)
class CTranslate2Checkpoint:
    """The contents of a ``model.bin``: spec, variables (CPU tensors; scalars have shape ()) and aliases."""

    path: Path
    spec: str
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str]


class _Reader:
    """Little-endian fields from a byte buffer, with errors that name the file and offset."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path, self.data, self.pos = path, memoryview(data), 0

    def take(self, size: int, what: str) -> memoryview:
        left = len(self.data) - self.pos
        if size > left:
            raise ValueError(
                f"{self.path}: truncated: {what} needs {size} bytes at offset {self.pos}, only {left} left "
                f"(file of {len(self.data)} bytes; re-download or re-assemble it)"
            )
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def uint(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        raw = bytes(self.take(self.uint("H", f"length of {what}"), what))
        if not raw.endswith(b"\0"):
            raise ValueError(f"{self.path}: {what} at offset {self.pos - len(raw)} is not NUL-terminated")
        return raw[:-1].decode("utf-8")


def read_model_bin(path: str | Path) -> CTranslate2Checkpoint:
    """Parse a CTranslate2 ``model.bin`` (binary version 6) into tensors; any model type, no conversion."""
    path = Path(path)
    reader = _Reader(path, path.read_bytes())
    version = reader.uint("I", "binary version")
    if version != BINARY_VERSION:
        raise ValueError(
            f"{path}: CTranslate2 binary version {version}, expected {BINARY_VERSION} "
            "(not a model.bin, or one written by an unsupported CTranslate2 release)"
        )
    spec = reader.string("spec name")
    revision = reader.uint("I", "spec revision")
    variables: dict[str, torch.Tensor] = {}
    for index in range(reader.uint("I", "variable count")):
        name = reader.string(f"name of variable {index}")
        dims = [reader.uint("I", f"dims of {name!r}") for _ in range(reader.uint("B", f"rank of {name!r}"))]
        code = reader.uint("B", f"dtype of {name!r}")
        if code not in DTYPES:
            raise ValueError(f"{path}: variable {name!r} has unknown dtype code {code} (known: {sorted(DTYPES)})")
        nbytes = reader.uint("I", f"byte count of {name!r}")
        numel = int(torch.Size(dims).numel())
        if nbytes != numel * DTYPES[code].itemsize:
            raise ValueError(f"{path}: variable {name!r} {dims} {DTYPES[code]} has {nbytes} bytes of data")
        raw = reader.take(nbytes, f"data of {name!r}")
        tensor = torch.frombuffer(bytearray(raw), dtype=DTYPES[code]) if numel else torch.empty(0, dtype=DTYPES[code])
        variables[name] = tensor.reshape(dims)
    aliases = {}
    for index in range(reader.uint("I", "alias count")):
        alias = reader.string(f"alias {index}")
        aliases[alias] = reader.string(f"target of alias {alias!r}")
    if reader.pos != len(reader.data):
        raise ValueError(f"{path}: {len(reader.data) - reader.pos} unexpected bytes after the aliases")
    return CTranslate2Checkpoint(path, spec, revision, variables, aliases)


def _short(items: list) -> str:
    shown = ", ".join(map(str, items[:_LISTED]))
    return f"[{shown}{f', ... ({len(items)} in all)' if len(items) > _LISTED else ''}]"


class _Variables:
    """Variables taken one by one, so that whatever is left at the end can be reported."""

    def __init__(self, checkpoint: CTranslate2Checkpoint) -> None:
        self.path = checkpoint.path
        self.left = dict(checkpoint.variables)

    def take(self, name: str) -> torch.Tensor:
        if name not in self.left:
            raise ValueError(f"{self.path}: variable {name!r} is missing (or was already used)")
        return self.left.pop(name)

    def peek(self, name: str) -> torch.Tensor:
        if name not in self.left:
            raise ValueError(f"{self.path}: variable {name!r} is missing")
        return self.left[name]

    def scalar(self, name: str) -> int:
        value = self.take(name)
        if value.numel() != 1:
            raise ValueError(f"{self.path}: {name!r} should be a scalar, has shape {tuple(value.shape)}")
        return int(value.item())

    def count_layers(self, stack: str) -> int:
        found = {int(m.group(1)) for n in self.left if (m := re.match(rf"{stack}/layer_(\d+)/", n))}
        if not found:
            raise ValueError(f"{self.path}: no {stack}/layer_N variables")
        return max(found) + 1


def _linear(v: _Variables, state: dict, ct2: str, hf: str) -> None:
    state[f"{hf}.weight"] = v.take(f"{ct2}/weight")
    state[f"{hf}.bias"] = v.take(f"{ct2}/bias")


def _layer_norm(v: _Variables, state: dict, ct2: str, hf: str) -> None:
    state[f"{hf}.weight"] = v.take(f"{ct2}/gamma")
    state[f"{hf}.bias"] = v.take(f"{ct2}/beta")


def _stacked(v: _Variables, state: dict, ct2: str, hf: str, projections: tuple[str, ...]) -> None:
    """A linear whose output rows stack several projections. The key projection's bias is dropped:
    transformers' Whisper has none, and it is exact to drop (q·b_k is the same for every key, so the
    softmax ignores it); CTranslate2 stores it as zeros anyway."""
    weight, bias = v.take(f"{ct2}/weight"), v.take(f"{ct2}/bias")
    if weight.shape[0] % len(projections) or bias.shape != weight.shape[:1]:
        raise ValueError(
            f"{v.path}: {ct2} weight {tuple(weight.shape)} / bias {tuple(bias.shape)} "
            f"do not stack {len(projections)} projections"
        )
    for name, w, b in zip(projections, weight.chunk(len(projections)), bias.chunk(len(projections))):
        state[f"{hf}.{name}.weight"] = w
        if name != "k_proj":
            state[f"{hf}.{name}.bias"] = b


def _layer(v: _Variables, state: dict, ct2: str, hf: str, cross_attention: bool) -> None:
    _stacked(v, state, f"{ct2}/self_attention/linear_0", f"{hf}.self_attn", ("q_proj", "k_proj", "v_proj"))
    _linear(v, state, f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
    _layer_norm(v, state, f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
    if cross_attention:
        _linear(v, state, f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
        _stacked(v, state, f"{ct2}/attention/linear_1", f"{hf}.encoder_attn", ("k_proj", "v_proj"))
        _linear(v, state, f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
        _layer_norm(v, state, f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
    _linear(v, state, f"{ct2}/ffn/linear_0", f"{hf}.fc1")
    _linear(v, state, f"{ct2}/ffn/linear_1", f"{hf}.fc2")
    _layer_norm(v, state, f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")


def _check_scalars(v: _Variables, d_model: int) -> dict[str, int]:
    values = {name: v.scalar(name) for name in _SCALARS if name in v.left}
    wrong = [
        f"{name} = {values[name]} (needs {want})"
        for name, want in _SCALARS.items()
        if want is not None and values.get(name, want) != want
    ]
    for name in ("encoder/num_heads", "decoder/num_heads"):
        heads = values.get(name)
        if heads is None or heads <= 0 or d_model % heads:
            wrong.append(f"{name} = {heads} (needs a divisor of d_model {d_model})")
    if wrong:
        raise ValueError(f"{v.path}: not convertible to transformers' Whisper: {', '.join(wrong)}")
    return values


def _check_tied_projection(checkpoint: CTranslate2Checkpoint, v: _Variables) -> None:
    """The output projection must be the token embedding (an alias, or an identical copy)."""
    alias, target = _TIED
    unknown = sorted(set(checkpoint.aliases) - {alias})
    if unknown or checkpoint.aliases.get(alias, target) != target:
        raise ValueError(
            f"{checkpoint.path}: unexpected aliases {checkpoint.aliases}; only {alias} -> {target} is known"
        )
    if alias in v.left and not torch.equal(v.take(alias), v.peek(target)):
        raise ValueError(f"{checkpoint.path}: {alias} differs from {target}; transformers' Whisper ties them")


def _whisper_state_dict(checkpoint: CTranslate2Checkpoint) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """HF names -> tensors (dtype as stored) and the scalars; errors on anything unused."""
    if checkpoint.spec != SPEC_NAME:
        raise ValueError(f"{checkpoint.path}: spec {checkpoint.spec!r}, expected {SPEC_NAME!r} (not a Whisper model)")
    quantized = sorted(n for n in checkpoint.variables if n.endswith("/weight_scale"))
    if quantized:
        raise ValueError(
            f"{checkpoint.path}: quantized weights ({quantized[0]}, {len(quantized)} in all) are not supported; "
            "use a float16/float32 conversion (ct2-transformers-converter --quantization float16)"
        )
    v = _Variables(checkpoint)
    scalars = _check_scalars(v, d_model=v.peek("encoder/conv1/weight").shape[0])
    _check_tied_projection(checkpoint, v)
    state: dict[str, torch.Tensor] = {}
    for stack in ("encoder", "decoder"):
        hf = f"model.{stack}"
        if stack == "encoder":
            _linear(v, state, "encoder/conv1", f"{hf}.conv1")
            _linear(v, state, "encoder/conv2", f"{hf}.conv2")
        else:
            state[f"{hf}.embed_tokens.weight"] = v.take("decoder/embeddings/weight")
        state[f"{hf}.embed_positions.weight"] = v.take(f"{stack}/position_encodings/encodings")
        for i in range(v.count_layers(stack)):
            _layer(v, state, f"{stack}/layer_{i}", f"{hf}.layers.{i}", cross_attention=stack == "decoder")
        _layer_norm(v, state, f"{stack}/layer_norm", f"{hf}.layer_norm")
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    if v.left:
        raise ValueError(f"{checkpoint.path}: variables unknown to the Whisper conversion: {_short(sorted(v.left))}")
    return state, scalars


def special_token_ids(directory: str | Path) -> dict[str, int]:
    """Token -> id for Whisper's special tokens, from ``tokenizer.json`` (its added tokens) or
    ``vocabulary.txt`` / ``vocabulary.json`` (the token list), as faster-whisper directories ship them."""
    directory = Path(directory)
    tokenizer, txt, listed = (directory / n for n in ("tokenizer.json", "vocabulary.txt", "vocabulary.json"))
    if tokenizer.is_file():
        added = json.loads(tokenizer.read_text(encoding="utf-8")).get("added_tokens", [])
        tokens = {t["content"]: t["id"] for t in added}
    elif txt.is_file() or listed.is_file():
        vocab = txt.read_text(encoding="utf-8").split("\n") if txt.is_file() else json.loads(listed.read_text())
        tokens = {t: i for i, t in enumerate(vocab)}
    else:
        raise FileNotFoundError(
            f"{directory}: no tokenizer.json, vocabulary.txt or vocabulary.json "
            "to take Whisper's special token ids from"
        )
    special = {t: i for t, i in tokens.items() if t.startswith("<|") and t.endswith("|>")}
    for required in ("<|endoftext|>", "<|startoftranscript|>"):
        if required not in special:
            raise ValueError(f"{directory}: the tokenizer has no {required} token")
    return special


def ctranslate2_to_hf_whisper(
    checkpoint: CTranslate2Checkpoint, special: dict[str, int], ct2_config: dict | None = None
) -> tuple[WhisperConfig, GenerationConfig, dict[str, torch.Tensor]]:
    """Config, generation config and ``WhisperForConditionalGeneration`` state dict of a Whisper
    ``model.bin``. Sizes come from the tensors' shapes; special token ids from ``special`` (see
    :func:`special_token_ids`); suppressed tokens, language ids and alignment heads from the
    directory's ``config.json`` (``ct2_config``) where present."""
    ct2_config = ct2_config or {}
    state, scalars = _whisper_state_dict(checkpoint)
    conv1 = state["model.encoder.conv1.weight"]
    vocab_size, d_model = state["model.decoder.embed_tokens.weight"].shape
    eot, sot = special["<|endoftext|>"], special["<|startoftranscript|>"]
    bad_ids = {t: i for t, i in special.items() if i >= vocab_size}
    if bad_ids:
        raise ValueError(f"{checkpoint.path}: special token ids beyond the vocabulary of {vocab_size}: {bad_ids}")
    suppress = ct2_config.get("suppress_ids", [])
    begin_suppress = ct2_config.get("suppress_ids_begin", [])
    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=conv1.shape[1],
        d_model=d_model,
        encoder_layers=sum(1 for k in state if re.fullmatch(r"model\.encoder\.layers\.\d+\.fc1\.weight", k)),
        decoder_layers=sum(1 for k in state if re.fullmatch(r"model\.decoder\.layers\.\d+\.fc1\.weight", k)),
        encoder_attention_heads=scalars["encoder/num_heads"],
        decoder_attention_heads=scalars["decoder/num_heads"],
        encoder_ffn_dim=state["model.encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=state["model.decoder.layers.0.fc1.weight"].shape[0],
        max_source_positions=state["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=state["model.decoder.embed_positions.weight"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
    )
    return config, _generation_config(config, special, ct2_config), state


def _generation_config(config: WhisperConfig, special: dict[str, int], ct2_config: dict) -> GenerationConfig:
    """The fields transformers' Whisper ``generate`` reads (languages, tasks, timestamps)."""
    id_to_token = {i: t for t, i in special.items()}
    fields = {
        "decoder_start_token_id": config.decoder_start_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "max_length": config.max_target_positions,
        "suppress_tokens": config.suppress_tokens,
        "begin_suppress_tokens": config.begin_suppress_tokens,
        "is_multilingual": config.vocab_size >= _MULTILINGUAL_VOCAB,
        "max_initial_timestamp_index": 50,
        "lang_to_id": {id_to_token[i]: i for i in ct2_config.get("lang_ids", []) if i in id_to_token},
        "task_to_id": {t: special[f"<|{t}|>"] for t in ("transcribe", "translate") if f"<|{t}|>" in special},
    }
    optional = {"no_timestamps_token_id": "<|notimestamps|>", "prev_sot_token_id": "<|startofprev|>"}
    fields.update({field: special[token] for field, token in optional.items() if token in special})
    if "alignment_heads" in ct2_config:
        fields["alignment_heads"] = ct2_config["alignment_heads"]
    return GenerationConfig(**fields)


def _model_bin_and_directory(src: str | Path) -> tuple[Path, Path]:
    src = Path(src)
    model_bin = src / "model.bin" if src.is_dir() else src
    if not model_bin.is_file():
        raise FileNotFoundError(f"{src}: no CTranslate2 model.bin (give a faster-whisper directory or its model.bin)")
    return model_bin, model_bin.parent


def load_ctranslate2_whisper(src: str | Path, dtype: torch.dtype = torch.float32) -> WhisperForConditionalGeneration:
    """``WhisperForConditionalGeneration`` from a faster-whisper directory (or its ``model.bin``, with
    ``config.json`` and ``tokenizer.json`` beside it); every parameter checked by name and shape."""
    model_bin, directory = _model_bin_and_directory(src)
    config_file = directory / "config.json"
    ct2_config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    config, generation_config, state = ctranslate2_to_hf_whisper(
        read_model_bin(model_bin), special_token_ids(directory), ct2_config
    )
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    expected = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: {tuple(state[k].shape)} vs {expected[k]}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != expected[k]
    )
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{model_bin}: does not fill transformers' Whisper; missing {_short(missing)}; "
            f"unexpected {_short(unexpected)}; shape mismatches (checkpoint vs model) {_short(mismatched)}"
        )
    model.load_state_dict({k: t.to(dtype) for k, t in state.items()}, strict=True, assign=True)
    model.tie_weights()
    model.generation_config = generation_config
    model.config.dtype = dtype
    return model.eval()


def convert_ctranslate2_whisper(src: str | Path, dst: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write a Hugging Face Whisper directory (config, generation config, ``model.safetensors``,
    ``preprocessor_config.json`` and, when the source has one, ``tokenizer.json``)."""
    _, directory = _model_bin_and_directory(src)
    model = load_ctranslate2_whisper(src, dtype)
    dst = Path(dst)
    model.save_pretrained(dst)
    WhisperFeatureExtractor(feature_size=model.config.num_mel_bins).save_pretrained(dst)
    if (directory / "tokenizer.json").is_file():
        shutil.copyfile(directory / "tokenizer.json", dst / "tokenizer.json")
    return dst
