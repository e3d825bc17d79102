"""Feature dumps on disk: float16 or float32 matrices in kaldiio ark/scp, one dtype per dump directory.

Kaldi's binary matrix format holds float32 (``FM``) and float64 (``DM``) only, and
``kaldiio.save_ark`` refuses a float16 array ("Unsupported array type: float16"). float16 dumps
are therefore written in kaldiio's numpy format (per entry: the key, ``NPY``, a length header and
an ``.npy`` file), which ``kaldiio.load_scp`` — and ESPnet's ``kaldi_ark`` data type, built on it
— reads back as float16, bit for bit, at half the size (a 1280-wide matrix: 2 bytes a value plus
~140 header bytes, against 4 plus 20). float32 dumps stay Kaldi's ``FM``, which Kaldi's own
tools read too.

A dump directory holds one dtype. :func:`check_dump_dtype` reads the first matrix of every archive
a ``feats.scp`` names and refuses a mix, or a dtype other than the one ``feats_conf.json`` records;
:func:`open_features` does that before handing out kaldiio's lazy reader. Readers convert the
matrices to the model's dtype themselves.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import kaldiio
import numpy as np

from espnet2_ext.errors import UserError
from espnet2_ext.speechllm.input_settings import read_feature_settings, settings_file
from espnet2_ext.text.kaldi_text import read_kaldi_text_lines

DUMP_DTYPES: dict[str, type[np.floating]] = {"float16": np.float16, "float32": np.float32}
_ARK_ENTRY = re.compile(r"(?P<ark>.*):\d+(?:\[[^\]]*\])?")


class FeatureDtypeError(UserError):
    """A dump whose archives do not share one dtype, or a matrix float16 cannot hold."""


def feature_writer(ark: str | Path, scp: str | Path, dump_dtype: str) -> kaldiio.WriteHelper:
    """kaldiio's ``ark,scp`` writer for matrices of ``dump_dtype`` (float16 in numpy format, float32 as ``FM``)."""
    if dump_dtype not in DUMP_DTYPES:
        raise ValueError(f"dump dtype must be one of {sorted(DUMP_DTYPES)}, got {dump_dtype!r}")
    return kaldiio.WriteHelper(f"ark,scp:{ark},{scp}", write_function="numpy" if dump_dtype == "float16" else None)


def to_dump_dtype(uttid: str, matrix: np.ndarray, dump_dtype: str) -> np.ndarray:
    """``matrix`` as stored; a value beyond float16's range is an error, never an ``inf`` on disk."""
    with np.errstate(over="ignore"):  # an overflow is reported below, naming the utterance
        stored = matrix.astype(DUMP_DTYPES[dump_dtype])
    if dump_dtype == "float16" and not np.isfinite(stored).all() and np.isfinite(matrix).all():
        peak = float(np.abs(matrix).max())
        raise FeatureDtypeError(
            f"utterance {uttid}: values up to {peak:.6g} exceed float16's range ({np.finfo(np.float16).max:g}); "
            "dump with --dump_dtype float32"
        )
    return stored


def first_entries(scp: str | Path) -> dict[str, str]:
    """``{archive: its first entry}`` for every archive that ``scp`` names, in order of first mention."""
    first: dict[str, str] = {}
    for line in read_kaldi_text_lines(scp):
        match = _ARK_ENTRY.fullmatch(line.text)
        first.setdefault(match["ark"] if match else line.text, line.text)
    return first


def archive_dtypes(scp: str | Path) -> dict[str, np.dtype]:
    """The dtype of the first matrix of every archive that ``scp`` names, in order of first mention."""
    return {ark: np.asarray(kaldiio.load_mat(entry)).dtype for ark, entry in first_entries(scp).items()}


def check_dump_dtype(scp: str | Path) -> np.dtype | None:
    """The one dtype of the dump ``scp`` lists (None: no entries); a mix, or a contradicted record, is an error."""
    found = archive_dtypes(scp)
    by_dtype: dict[str, list[str]] = {}
    for ark, dtype in found.items():
        by_dtype.setdefault(str(dtype), []).append(ark)
    if len(by_dtype) > 1:
        listing = "; ".join(
            f"{dtype}: {', '.join(arks[:3])}{' ...' if len(arks) > 3 else ''}" for dtype, arks in by_dtype.items()
        )
        raise FeatureDtypeError(
            f"{scp}: its archives mix dtypes ({listing}); a dump directory holds one dtype: "
            "dump it again (stage 3) with one --dump_dtype"
        )
    if not by_dtype:
        return None
    dtype = next(iter(found.values()))
    record = settings_file(scp)
    settings = read_feature_settings(record)
    if settings is not None and settings.dump_dtype is not None and settings.dump_dtype != str(dtype):
        raise FeatureDtypeError(
            f"{scp}: its archives hold {dtype}, but {record} records dump_dtype {settings.dump_dtype}: "
            "archives from different dumps? dump it again (stage 3)"
        )
    return dtype


def open_features(scp: str | Path) -> Mapping[str, np.ndarray]:
    """kaldiio's lazy reader of ``scp`` (matrices as stored), once its archives are known to share one dtype."""
    check_dump_dtype(scp)
    return kaldiio.load_scp(str(scp))
