"""Frozen weights in bf16, trainable ones and AdamW states in fp32, streamed loading; bad precision refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from helpers_tiny import save_tiny_chatglm3, tiny_cot_ner_batch

from espnet2_ext.errors import UserError
from espnet2_ext.speechllm.chatglm3 import load_chatglm3
from espnet2_ext.speechllm.precision import check_precision_args
from espnet2_ext.tasks.speechllm import SpeechLLMTask

REPO = Path(__file__).resolve().parents[1]


def _args(tmp: Path, llm_dir: Path, *extra: str, config: str = "tiny_decoder_only.yaml"):
    args = SpeechLLMTask.get_parser().parse_args([
        "--config", str(REPO / "conf/tuning" / config), "--llm_conf", f"path={llm_dir}",
        "--tokenizer_file", str(tmp / "spm.model"), "--llm_finetune", "lora", "--lora_conf", "r=4",
        "--frozen_dtype", "bfloat16", "--output_dir", str(tmp / "exp"), *extra,
    ])
    args.llm_conf.pop("dtype", None)
    return args


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("precision")
    tokenizer, batch = tiny_cot_ner_batch(tmp)
    return tmp, save_tiny_chatglm3(tmp / "llm", tokenizer.vocab_size), batch


@pytest.mark.parametrize("config, extra", [
    ("tiny_decoder_only.yaml", []),
    ("tiny_encoder_decoder.yaml", ["--connector_conf", "gate_init=0.5"]),  # open gates: gradients reach XATT
])
def test_frozen_bf16_trainable_fp32_and_lr_sized_updates(tiny, config, extra):
    tmp, llm_dir, batch = tiny
    model = SpeechLLMTask.build_model(_args(tmp, llm_dir, *extra, config=config))
    model = model.to(dtype=torch.float32, device="cpu")  # what ESPnet's train_dtype does: frozen weights stay bf16
    frozen = {n: p.dtype for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and set(frozen.values()) == {torch.bfloat16}
    assert any("lora_" in n for n in trainable) and any(n.startswith("connector.") for n in trainable)
    assert {p.dtype for p in trainable.values()} == {torch.float32}

    lr = 1e-4
    optim = SpeechLLMTask.build_optimizers(_args(tmp, llm_dir, "--optim", "adamw", "--optim_conf", f"lr={lr}",
                                                 "--optim_conf", "weight_decay=0.0", config=config), model)[0]
    before = {n: p.detach().clone() for n, p in trainable.items()}
    model.train()
    loss, _, _ = model(**batch)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    optim.step()
    states = [t for state in optim.state.values() for t in state.values() if t.dim() > 0]
    assert states and {t.dtype for t in states} == {torch.float32}
    name = next(n for n in trainable if n.startswith("connector.") and n.endswith("weight"))
    grad, delta = trainable[name].grad, trainable[name].detach() - before[name]
    moved = grad.abs() > 1e-6
    assert moved.float().mean() > 0.5
    # Adam's first step moves every weight with a gradient by lr; a bf16 copy would have lost most of them.
    assert torch.allclose(delta[moved].abs(), torch.full_like(delta[moved], lr), rtol=0.05)
    lost = (before[name] + delta).bfloat16() == before[name].bfloat16()
    assert lost[moved].float().mean() > 0.5

    saved = model.state_dict()
    assert set(saved) == set(trainable) and {t.dtype for t in saved.values()} == {torch.float32}


def test_llm_is_read_straight_into_bf16(tiny):
    _, llm_dir, _ = tiny
    reference, bf16 = load_chatglm3(llm_dir), load_chatglm3(llm_dir, dtype=torch.bfloat16, device="cpu")
    for (name, ref), (_, got) in zip(reference.state_dict().items(), bf16.state_dict().items()):
        assert got.dtype == torch.bfloat16 and torch.equal(got, ref.bfloat16()), name


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--train_dtype", "float16"], "keep train_dtype float32"),
        (["--frozen_dtype", "float16"], "needs use_amp true"),
    ],
)
def test_bad_precision_is_refused(tiny, extra, message):
    tmp, llm_dir, _ = tiny
    with pytest.raises(UserError, match=message):
        check_precision_args(_args(tmp, llm_dir, *extra))


def test_fp32_llm_directory_refused_when_bf16_is_asked(tiny):
    from espnet2_ext.bin import convert_chatglm3

    tmp, llm_dir, _ = tiny
    (llm_dir / "tokenizer.model").write_bytes((tmp / "spm.model").read_bytes())
    with pytest.raises(UserError, match="stored in float32 but frozen_dtype is bfloat16.*convert_chatglm3"):
        SpeechLLMTask.main_worker(_args(tmp, llm_dir))
    convert_chatglm3.main([str(llm_dir), str(tmp / "bf16"), "--dtype", "bfloat16"])
    with pytest.raises(UserError, match="keep train_dtype float32"):  # the LLM check passed; the next one fails
        SpeechLLMTask.main_worker(_args(tmp, tmp / "bf16", "--train_dtype", "float16"))


def test_loading_peak_stays_near_the_bf16_model(tmp_path):
    spec = importlib.util.spec_from_file_location("loading_memory", REPO / "bench" / "loading_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.write_checkpoint(tmp_path / "llm", hidden=512, layers=8, ffn=1536, vocab=8192, shards=8, safetensors=False)
    result = bench.measure(tmp_path / "llm", "bin")
    assert result["model_bytes"] > 50e6
    assert result["peak_over_model"] < 1.35, result
