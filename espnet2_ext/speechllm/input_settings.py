"""What a model's input was made with, recorded where it is made so that decoding can repeat it.

A model trained on cached encoder outputs cannot tell from its training config whether those were
computed on 30-s padded input: ``bin/dump_feats.py`` therefore writes ``STEM_conf.json`` next to
its ``STEM.*.scp`` files (:func:`settings_file`), ``bin/pack_model.py`` copies the training
input's settings into the packed ``meta.json`` (``"input"``), and ``Speech2TextNER.from_pretrained``
decodes with them. ``bin/speechllm_inference.py`` compares the record of the features it decodes
with the record of the model's training features (:func:`mismatched_settings`). The record also
says how the matrices are stored (``dump_dtype``: float16 or float32; None in records written
before it was recorded, when every dump was float32), which :mod:`espnet2_ext.feats_io` checks
against the archives.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from espnet2_ext.speechllm.frontend import SAMPLE_RATE

INPUT_TYPES = ("encoder_output", "mel")
DUMP_DTYPE_NAMES = ("float16", "float32", None)


@dataclass(frozen=True)
class FeatureSettings:
    """Dumped features: Whisper encoder outputs or log-mel, on 30-s padded input or not (n_mels None: unknown),
    stored as ``dump_dtype`` (None: not recorded)."""

    input_type: str
    pad_to_30s: bool
    n_mels: int | None
    sample_rate: int = SAMPLE_RATE
    dump_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.input_type not in INPUT_TYPES:
            raise ValueError(f"input_type must be one of {INPUT_TYPES}, got {self.input_type!r}")
        if self.dump_dtype not in DUMP_DTYPE_NAMES:
            raise ValueError(f"dump_dtype must be one of {DUMP_DTYPE_NAMES}, got {self.dump_dtype!r}")

    def input_settings(self) -> dict:
        """What the model's input depends on (how it was stored does not matter)."""
        return {k: v for k, v in asdict(self).items() if k != "dump_dtype"}


def settings_file(scp: str | Path) -> Path:
    """``dump/x/feats.scp`` (or ``feats.3.scp``) -> ``dump/x/feats_conf.json``."""
    scp = Path(scp)
    return scp.parent / f"{scp.name.split('.')[0]}_conf.json"


def write_feature_settings(path: Path, settings: FeatureSettings) -> None:
    """Write atomically (parallel dump jobs write the same file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        json.dump(asdict(settings), stream, indent=2)
        stream.write("\n")
    os.replace(tmp, path)


def read_feature_settings(path: Path) -> FeatureSettings | None:
    """The settings recorded in ``path``; None when there is no such file (features dumped before the record)."""
    if not path.is_file():
        return None
    try:
        return FeatureSettings(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a feature settings record ({err})") from err


def mismatched_settings(decoding: FeatureSettings, trained: FeatureSettings) -> list[str]:
    """``name: decoding vs trained`` for every input setting (storage aside) the two records disagree on;
    an unknown ``n_mels`` (None) agrees with any."""
    found = []
    for name, value in decoding.input_settings().items():
        other = getattr(trained, name)
        if value != other and not (name == "n_mels" and None in (value, other)):
            found.append(f"{name} {value} here, {other} in training")
    return found
