"""Split a data set into job key lists without separating a speaker's utterances.

Long-form decoding feeds each utterance the model's own hypotheses for the
previous utterances of the same speaker, so a speaker must live in one job.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path


def read_utt2spk(path: Path) -> "OrderedDict[str, list[str]]":
    """Speaker -> utterance ids in file order; errors name the file and line."""
    speakers: "OrderedDict[str, list[str]]" = OrderedDict()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(f"{path}:{lineno}: expected 'uttid speaker', got {line.rstrip()!r}")
            speakers.setdefault(fields[1], []).append(fields[0])
    return speakers


def split_by_speaker(speakers: "OrderedDict[str, list[str]]", nj: int) -> list[list[str]]:
    """Greedy balance of utterance counts over `nj` jobs, largest speakers first.

    Every job gets at least one speaker, so `nj` must not exceed the number of speakers.
    """
    if not 1 <= nj <= len(speakers):
        raise ValueError(f"nj={nj} must be between 1 and the number of speakers ({len(speakers)})")
    jobs: list[list[str]] = [[] for _ in range(nj)]
    sizes = [0] * nj
    for spk in sorted(speakers, key=lambda s: (-len(speakers[s]), s)):
        j = sizes.index(min(sizes))
        jobs[j].extend(speakers[spk])
        sizes[j] += len(speakers[spk])
    return [sorted(job) for job in jobs]
