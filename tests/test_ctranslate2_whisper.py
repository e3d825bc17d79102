"""CTranslate2 (faster-whisper) Whisper -> Hugging Face Whisper: the binary format, the name mapping, errors.

The tests write a faster-whisper directory from a tiny random transformers Whisper with
their own writer (the inverse mapping, in the exact binary layout), convert it back and
compare outputs with the original model's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import WhisperConfig, WhisperForConditionalGeneration

from espnet2_ext.bin import convert_ctranslate2_whisper as cli
from espnet2_ext.speechllm.ctranslate2_whisper import (
    convert_ctranslate2_whisper,
    read_model_bin,
    special_token_ids,
)
from espnet2_ext.speechllm.whisper_encoder import load_whisper_encoder

REPO_ROOT = Path(__file__).resolve().parents[1]
WHISPER_BASE = REPO_ROOT / "tools" / "models" / "whisper-base"
VOCAB = 64
SPECIAL = [
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|zh|>", "<|translate|>",
    "<|transcribe|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>",
]  # fmt: skip
FIRST_SPECIAL = VOCAB - len(SPECIAL)  # <|endoftext|> = 55, <|startoftranscript|> = 56, ...
CT2_CONFIG = {
    "alignment_heads": [[1, 0], [2, 1]],
    "lang_ids": [57, 58],
    "suppress_ids": [1, 2],
    "suppress_ids_begin": [3, 55],
}
DTYPE_CODES = {torch.float32: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.float16: 4, torch.bfloat16: 5}
FRAMES = 100  # 2 x max_source_positions: what the stock encoder insists on


def tiny_whisper(seed: int = 0) -> WhisperForConditionalGeneration:
    """Random weights everywhere (biases and norms too), exactly representable in float16; encoder and
    decoder sizes differ so that a swap shows."""
    config = WhisperConfig(
        vocab_size=VOCAB, num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=3,
        encoder_attention_heads=4, decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=40,
        max_source_positions=FRAMES // 2, max_target_positions=24,
        pad_token_id=FIRST_SPECIAL, bos_token_id=FIRST_SPECIAL, eos_token_id=FIRST_SPECIAL,
        decoder_start_token_id=FIRST_SPECIAL + 1, suppress_tokens=[], begin_suppress_tokens=[],
    )  # fmt: skip
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param)).copy_(param.half().float())
    return model


def _fused(*parts: torch.Tensor) -> torch.Tensor:
    return torch.cat(parts).contiguous()


def to_ctranslate2(model: WhisperForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The inverse mapping: CTranslate2 WhisperSpec variables, linear weights and embeddings in float16,
    the rest in float32, scalars as CTranslate2 stores them (int16 / int8)."""
    sd, cfg = model.state_dict(), model.config
    f16 = {n: t.half() for n, t in sd.items() if n.endswith(".weight") and t.dim() == 2 and "positions" not in n}
    sd = {**sd, **f16}
    var: dict[str, torch.Tensor] = {
        "encoder/num_heads": torch.tensor(cfg.encoder_attention_heads, dtype=torch.int16),
        "decoder/num_heads": torch.tensor(cfg.decoder_attention_heads, dtype=torch.int16),
        "decoder/activation": torch.tensor(3, dtype=torch.int8),
        "decoder/alibi": torch.tensor(0, dtype=torch.int8),
        "decoder/alignment_heads": torch.tensor(1, dtype=torch.int16),
        "decoder/alignment_layer": torch.tensor(-1, dtype=torch.int16),
        "decoder/pre_norm": torch.tensor(1, dtype=torch.int8),
        "decoder/scale_embeddings": torch.tensor(0, dtype=torch.int8),
        "decoder/start_from_zero_embedding": torch.tensor(0, dtype=torch.int8),
        "decoder/embeddings/weight": sd["model.decoder.embed_tokens.weight"],
    }

    def linear(ct2: str, hf: str) -> None:
        var[f"{ct2}/weight"], var[f"{ct2}/bias"] = sd[f"{hf}.weight"], sd[f"{hf}.bias"]

    def norm(ct2: str, hf: str) -> None:
        var[f"{ct2}/gamma"], var[f"{ct2}/beta"] = sd[f"{hf}.weight"], sd[f"{hf}.bias"]

    def stacked(ct2: str, hf: str, names: list[str]) -> None:
        var[f"{ct2}/weight"] = _fused(*(sd[f"{hf}.{n}.weight"] for n in names))
        zeros = torch.zeros(cfg.d_model)
        var[f"{ct2}/bias"] = _fused(*(zeros if n == "k_proj" else sd[f"{hf}.{n}.bias"] for n in names))

    for stack in ("encoder", "decoder"):
        hf = f"model.{stack}"
        var[f"{stack}/position_encodings/encodings"] = sd[f"{hf}.embed_positions.weight"]
        norm(f"{stack}/layer_norm", f"{hf}.layer_norm")
        for i in range(getattr(cfg, f"{stack}_layers")):
            c, h = f"{stack}/layer_{i}", f"{hf}.layers.{i}"
            stacked(f"{c}/self_attention/linear_0", f"{h}.self_attn", ["q_proj", "k_proj", "v_proj"])
            linear(f"{c}/self_attention/linear_1", f"{h}.self_attn.out_proj")
            norm(f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
            linear(f"{c}/ffn/linear_0", f"{h}.fc1")
            linear(f"{c}/ffn/linear_1", f"{h}.fc2")
            norm(f"{c}/ffn/layer_norm", f"{h}.final_layer_norm")
            if stack == "decoder":
                linear(f"{c}/attention/linear_0", f"{h}.encoder_attn.q_proj")
                stacked(f"{c}/attention/linear_1", f"{h}.encoder_attn", ["k_proj", "v_proj"])
                linear(f"{c}/attention/linear_2", f"{h}.encoder_attn.out_proj")
                norm(f"{c}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
    linear("encoder/conv1", "model.encoder.conv1")
    linear("encoder/conv2", "model.encoder.conv2")
    return var


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_model_bin(
    path: Path,
    variables: dict[str, torch.Tensor],
    aliases: dict[str, str] | None = None,
    version: int = 6,
    spec: str = "WhisperSpec",
) -> Path:
    """CTranslate2's binary layout, written independently of the reader under test."""
    aliases = {"decoder/projection/weight": "decoder/embeddings/weight"} if aliases is None else aliases
    out = [struct.pack("<I", version), _string(spec), struct.pack("<II", 3, len(variables))]
    for name, tensor in sorted(variables.items()):
        raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        out += [_string(name), struct.pack(f"<B{tensor.dim()}I", tensor.dim(), *tensor.shape)]
        out += [struct.pack("<BI", DTYPE_CODES[tensor.dtype], len(raw)), raw]
    out.append(struct.pack("<I", len(aliases)))
    out += [_string(a) + _string(t) for a, t in aliases.items()]
    path.write_bytes(b"".join(out))
    return path


def write_faster_whisper_dir(directory: Path, variables: dict[str, torch.Tensor], **model_bin) -> Path:
    """model.bin + config.json + tokenizer.json, as faster-whisper model directories hold them."""
    directory.mkdir(parents=True, exist_ok=True)
    write_model_bin(directory / "model.bin", variables, **model_bin)
    (directory / "config.json").write_text(json.dumps(CT2_CONFIG))
    tokenizer = Tokenizer(WordLevel({f"t{i}": i for i in range(FIRST_SPECIAL)}, unk_token="t0"))
    tokenizer.add_special_tokens(SPECIAL)
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(original model, faster-whisper dir, converted HF dir)."""
    root = tmp_path_factory.mktemp("ct2")
    model = tiny_whisper()
    src = write_faster_whisper_dir(root / "faster-whisper", to_ctranslate2(model))
    return model, src, convert_ctranslate2_whisper(src, root / "hf")


def test_reader_returns_every_dtype_and_alias(tmp_path):
    variables = {
        "f32": torch.randn(2, 3),
        "f16": torch.randn(4).half(),
        "bf16": torch.randn(3, 1).bfloat16(),
        "i32": torch.tensor([7, -9], dtype=torch.int32),
        "i16": torch.tensor(8, dtype=torch.int16),
        "i8": torch.tensor(-1, dtype=torch.int8),
    }
    path = write_model_bin(tmp_path / "model.bin", variables, aliases={"alias": "f32"}, spec="AnySpec")
    checkpoint = read_model_bin(path)
    assert (checkpoint.spec, checkpoint.revision, checkpoint.aliases) == ("AnySpec", 3, {"alias": "f32"})
    assert checkpoint.variables.keys() == variables.keys()
    for name, tensor in variables.items():
        assert checkpoint.variables[name].dtype == tensor.dtype and torch.equal(checkpoint.variables[name], tensor)


def test_converted_model_equals_original(converted):
    model, _, hf_dir = converted
    loaded = WhisperForConditionalGeneration.from_pretrained(hf_dir).eval()
    feats = torch.randn(2, 80, FRAMES)
    tokens = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        want = model(input_features=feats, decoder_input_ids=tokens)
        got = loaded(input_features=feats, decoder_input_ids=tokens)
    torch.testing.assert_close(got.encoder_last_hidden_state, want.encoder_last_hidden_state, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-5)
    assert loaded.proj_out.weight.data_ptr() == loaded.model.decoder.embed_tokens.weight.data_ptr()


def test_config_from_shapes_tokenizer_and_config_json(converted):
    model, src, hf_dir = converted
    config = WhisperConfig.from_pretrained(hf_dir)
    for field in (
        "vocab_size", "num_mel_bins", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
        "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_source_positions",
        "max_target_positions", "eos_token_id", "pad_token_id", "bos_token_id", "decoder_start_token_id",
    ):  # fmt: skip
        assert getattr(config, field) == getattr(model.config, field), field
    assert (config.suppress_tokens, config.begin_suppress_tokens) == ([1, 2], [3, 55])
    generation = json.loads((hf_dir / "generation_config.json").read_text())
    assert generation["lang_to_id"] == {"<|en|>": 57, "<|zh|>": 58}
    assert generation["task_to_id"] == {"transcribe": 60, "translate": 59}
    assert (generation["no_timestamps_token_id"], generation["prev_sot_token_id"]) == (63, 61)
    assert generation["alignment_heads"] == [[1, 0], [2, 1]]
    assert json.loads((hf_dir / "preprocessor_config.json").read_text())["feature_size"] == 80
    assert (hf_dir / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()


def test_special_ids_also_from_vocabulary_txt(tmp_path, converted):
    _, src, _ = converted
    tokens = [f"t{i}" for i in range(FIRST_SPECIAL)] + SPECIAL
    (tmp_path / "vocabulary.txt").write_text("\n".join(tokens))
    want = {token: FIRST_SPECIAL + i for i, token in enumerate(SPECIAL)}
    assert special_token_ids(tmp_path) == special_token_ids(src) == want


def test_project_whisper_loader_reads_the_converted_directory(converted):
    """The loader behind ``--whisper DIR`` (strict: it refuses missing or unexpected keys)."""
    model, _, hf_dir = converted
    encoder = load_whisper_encoder(hf_dir)
    feats = torch.randn(1, 80, FRAMES)
    with torch.no_grad():
        want = model.get_encoder()(feats).last_hidden_state
        got, lengths = encoder(feats.transpose(1, 2), torch.tensor([FRAMES]))
    assert lengths.tolist() == [FRAMES // 2]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_cli_checks_sha256_and_writes_float16(converted, tmp_path):
    _, src, _ = converted
    with pytest.raises(SystemExit, match="sha256 .*expected 00"):
        cli.main([str(src), str(tmp_path / "bad"), "--sha256", "00" * 32])
    assert not (tmp_path / "bad").exists()
    truncated = tmp_path / "model.bin"
    truncated.write_bytes((src / "model.bin").read_bytes()[:100])
    with pytest.raises(SystemExit, match=f"error: {truncated}: truncated"):
        cli.main([str(truncated), str(tmp_path / "bad")])
    sha256 = hashlib.sha256((src / "model.bin").read_bytes()).hexdigest()
    cli.main([str(src / "model.bin"), str(tmp_path / "f16"), "--sha256", sha256, "--dtype", "float16"])
    with safe_open(tmp_path / "f16" / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float16}
    assert load_whisper_encoder(tmp_path / "f16").conv1.weight.dtype == torch.float32


def _without(variables: dict, name: str) -> dict:
    return {k: v for k, v in variables.items() if k != name}


BROKEN = {
    "wrong version": (lambda v: (v, {"version": 5}), ValueError, "binary version 5, expected 6"),
    "not Whisper": (lambda v: (v, {"spec": "TransformerSpec"}), ValueError, "spec 'TransformerSpec'"),
    "unknown variable": (
        lambda v: ({**v, "encoder/layer_0/self_attention/relative_position_keys": torch.zeros(3)}, {}),
        ValueError,
        r"unknown to the Whisper conversion: \[encoder/layer_0/self_attention/relative_position_keys\]",
    ),
    "missing variable": (
        lambda v: (_without(v, "decoder/layer_2/ffn/linear_0/bias"), {}),
        ValueError,
        "'decoder/layer_2/ffn/linear_0/bias' is missing",
    ),
    "missing layer": (
        lambda v: ({k: t for k, t in v.items() if not k.startswith("decoder/layer_1/")}, {}),
        ValueError,
        "'decoder/layer_1/self_attention/linear_0/weight' is missing",
    ),
    "quantized": (
        lambda v: ({**v, "encoder/layer_0/ffn/linear_0/weight_scale": torch.ones(48)}, {}),
        ValueError,
        r"quantized weights \(encoder/layer_0/ffn/linear_0/weight_scale, 1 in all\) are not supported",
    ),
    "post-norm": (
        lambda v: ({**v, "decoder/pre_norm": torch.tensor(0, dtype=torch.int8)}, {}),
        ValueError,
        r"decoder/pre_norm = 0 \(needs 1\)",
    ),
    "untied projection": (
        lambda v: ({**v, "decoder/projection/weight": 0 * v["decoder/embeddings/weight"]}, {"aliases": {}}),
        ValueError,
        "decoder/projection/weight differs from decoder/embeddings/weight",
    ),
    "shape mismatch": (
        lambda v: ({**v, "encoder/layer_1/ffn/linear_1/bias": torch.zeros(31)}, {}),
        ValueError,
        r"model.encoder.layers.1.fc2.bias: \(31,\) vs \(32,\)",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_checkpoints_are_refused_naming_the_file(case, tmp_path):
    change, error, message = BROKEN[case]
    variables, model_bin = change(to_ctranslate2(tiny_whisper()))
    src = write_faster_whisper_dir(tmp_path / "src", variables, **model_bin)
    with pytest.raises(error, match=message) as caught:
        convert_ctranslate2_whisper(src, tmp_path / "hf")
    assert str(src / "model.bin") in str(caught.value)
    assert not (tmp_path / "hf").exists()


def test_truncated_file_is_refused(tmp_path):
    path = write_model_bin(tmp_path / "model.bin", to_ctranslate2(tiny_whisper()))
    data = path.read_bytes()
    for cut in (3, 40, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=rf"{path}: truncated: .* only \d+ left"):
            read_model_bin(path)


def test_directory_without_tokenizer_is_refused(converted, tmp_path):
    _, src, _ = converted
    shutil.copyfile(src / "model.bin", tmp_path / "model.bin")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no tokenizer.json, vocabulary.txt"):
        convert_ctranslate2_whisper(tmp_path, tmp_path / "hf")


def _installed_whisper_base() -> Path:
    if not (WHISPER_BASE / "SHA256SUMS").is_file():
        pytest.skip(f"{WHISPER_BASE} is not installed (make -C tools)")
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are needed (make -C tools system)")
    return WHISPER_BASE


def test_installed_whisper_base_hears_english():
    """The real conversion (tools/models/whisper-base, from ``make -C tools``): the project's loader takes
    it, and greedy decoding of an espeak-ng sentence is close to the sentence."""
    model_dir = _installed_whisper_base()
    encoder = load_whisper_encoder(model_dir)
    assert (encoder.config.d_model, encoder.config.encoder_layers, encoder.config.vocab_size) == (512, 6, 51865)
    script = _load_tool("transcribe_espeak")
    sentence = "the quick brown fox jumps over the lazy dog"
    heard = script.transcribe(model_dir, script.speak(sentence)).lower().strip(".").split()
    assert len(set(heard) & set(sentence.split())) >= 5, heard


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_install_check_verifies_the_model_directory(converted, tmp_path):
    """``make -C tools check``: every file against SHA256SUMS, and the source model.bin's pinned checksum."""
    check = _load_tool("check_install").check_whisper_dir
    _, _, hf_dir = converted
    installed = shutil.copytree(hf_dir, tmp_path / "whisper")
    with pytest.raises(ValueError, match="not installed"):
        check(installed, "ab" * 32)
    (installed / "SOURCE").write_text(f"model.bin sha256 {'ab' * 32} from x==1\n")
    files = sorted(p.name for p in installed.iterdir())
    sums = "".join(f"{hashlib.sha256((installed / n).read_bytes()).hexdigest()}  {n}\n" for n in files)
    (installed / "SHA256SUMS").write_text(sums)
    assert f"{len(files)} files verified" in check(installed, "ab" * 32)
    with pytest.raises(ValueError, match="does not name model.bin sha256"):
        check(installed, "cd" * 32)
    (installed / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"\['config.json'\] missing or corrupt"):
        check(installed, "ab" * 32)
