"""The mini recipe's decaying learning-rate schedules end on the last step of training.

ESPnet's piecewise-linear scheduler counts steps, not epochs: a decay written for one number of epochs and
batches silently stops early (rate 0 for the rest) or never reaches 0 when either changes. The mini configs
batch by a fixed count (``folded``, utterances shorter than the fold length), so an epoch has
ceil(train utterances / batch_size) steps, with the train size set by run.sh.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml

RECIPE = Path(__file__).resolve().parents[1] / "egs/mini_aishell_ner/llm1"
CONFIGS = sorted(RECIPE.glob("conf/train_*_phase*.yaml"))


def _num_train() -> int:
    """The full (non --fast) corpus size run.sh asks stage 0 for."""
    sizes = re.findall(r"--num_train (\d+)", (RECIPE / "run.sh").read_text(encoding="utf-8"))
    return max(int(size) for size in sizes)


def _decaying(path: Path) -> bool:
    conf = yaml.safe_load(path.read_text(encoding="utf-8"))
    return conf["scheduler"] == "piecewiselinearwarmuplr" and conf["scheduler_conf"]["warmup_lr_list"][-1] == 0


def test_some_mini_phase_decays():
    assert len(CONFIGS) == 6 and any(_decaying(path) for path in CONFIGS)


@pytest.mark.parametrize("config", [p for p in CONFIGS if _decaying(p)], ids=lambda p: p.name)
def test_decay_ends_on_the_last_step(config):
    conf = yaml.safe_load(config.read_text(encoding="utf-8"))
    assert conf["batch_type"] == "folded"
    steps = math.ceil(_num_train() / conf["batch_size"]) * conf["max_epoch"]
    assert conf["scheduler_conf"]["warmup_steps_list"][-1] == steps, (
        f"{config.name}: the rate reaches 0 at step {conf['scheduler_conf']['warmup_steps_list'][-1]}, "
        f"training ends at step {steps}"
    )
