#!/usr/bin/env python3
"""Fingerprints of what a recipe stage was made from, so that a rerun redoes exactly the stale stages.

A stage lists what it reads as items:

    file:PATH        the content of a (small) file, or of every file under a directory
    stat:PATH        size and modification time of a (large) file, or of every file under a directory
    scp:PATH         the content of a Kaldi scp file, plus size and mtime of every file it points to
    opt:NAME=VALUE   an option that changes the stage's output

``check MARKER PENDING ITEM...`` computes the manifest (one digest per item) and compares it with
the one recorded in MARKER: exit 0 when they agree (the stage is up to date); otherwise the new
manifest is written to PENDING, one line saying why the stage must run goes to stdout, and the
exit status is 1. After the stage succeeded, ``commit MARKER PENDING`` moves PENDING to MARKER.

``--deps FILE`` names a file of items (one per line) that the stage itself writes while running,
listing the inputs only it knows (a recipe's local/data.sh lists its corpus files): ``check``
reads the file left by the last run, ``commit`` the one the run just wrote.

Names starting with a dot are left out of directory walks (markers live there). Standard library
only, so it runs before and outside any virtual environment.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

KINDS = ("file", "stat", "scp", "opt")
VERSION = 1
MISSING = "missing"


class ItemError(ValueError):
    """An item that is not KIND:VALUE with a known kind."""


def _hasher() -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=16)


def _walk(top: str, rel: str, out: list[str], seen: set[tuple[int, int]], with_stat: bool) -> None:
    """Append the path relative to the walk's root of every file under top to out (with_stat: with
    its size and mtime); a directory reached twice through links is walked once."""
    try:
        info = os.stat(top)
        with os.scandir(top) as it:
            entries = list(it)
    except OSError:
        return
    if (info.st_dev, info.st_ino) in seen:
        return
    seen.add((info.st_dev, info.st_ino))
    for entry in entries:
        name = entry.name
        if name[0] == ".":
            continue
        try:
            if entry.is_dir():
                _walk(entry.path, f"{rel}{name}/", out, seen, with_stat)
            elif with_stat:
                st = entry.stat()
                out.append(f"{rel}{name}\0{st.st_size}\0{st.st_mtime_ns}")
            else:
                out.append(f"{rel}{name}")
        except OSError:
            out.append(f"{rel}{name}\0{MISSING}")


def files_under(root: str, with_stat: bool = False) -> list[str]:
    """Every file under root (relative paths, name order; with_stat: plus size and mtime)."""
    out: list[str] = []
    _walk(root, "", out, set(), with_stat)
    out.sort()
    return out


def _text_digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


def _file_content(path: str) -> str:
    h = _hasher()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest_content(path: str) -> str:
    """Content of a file, or names and contents of every file under a directory."""
    if os.path.isfile(path):
        return _file_content(path)
    if not os.path.isdir(path):
        return MISSING
    return _text_digest("\n".join(f"{rel}\0{_file_content(os.path.join(path, rel))}" for rel in files_under(path)))


def digest_stat(path: str) -> str:
    """Size and mtime of a file, or names, sizes and mtimes of every file under a directory."""
    try:
        info = os.stat(path)
    except OSError:
        return MISSING
    if not os.path.isdir(path):
        return f"{info.st_size}:{info.st_mtime_ns}"
    return _text_digest("\n".join(files_under(path, with_stat=True)))


def digest_scp(path: str) -> str:
    """Content of an scp file plus size and mtime of each file it lists (piped commands: content only).
    Listed paths are relative to the working directory, as in Kaldi."""
    if not os.path.isfile(path):
        return MISSING
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        lines = f.read().splitlines()
    out = [_file_content(path)]
    for line in lines:
        fields = line.strip().split(maxsplit=1)
        if len(fields) < 2 or fields[1].endswith("|"):
            continue
        try:
            st = os.stat(fields[1])
            out.append(f"{st.st_size}\0{st.st_mtime_ns}")
        except OSError:
            out.append(MISSING)
    return _text_digest("\n".join(out))


def digest(item: str) -> tuple[str, str]:
    """(key, digest) of one item; the key of ``opt:NAME=VALUE`` is ``opt:NAME``."""
    kind, sep, value = item.partition(":")
    if not sep or kind not in KINDS:
        raise ItemError(f"bad item {item!r}: expected KIND:VALUE with KIND one of {', '.join(KINDS)}")
    if kind == "opt":
        name, _, setting = value.partition("=")
        return f"opt:{name}", _text_digest(setting)
    compute = {"file": digest_content, "stat": digest_stat, "scp": digest_scp}[kind]
    return item, compute(value)


def manifest_of(items: Iterable[str]) -> dict[str, str]:
    return dict(digest(item) for item in items)


def read_deps(path: str | None) -> list[str]:
    """Items listed in a deps file (one per line); none when there is no such file."""
    if not path or not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def fingerprint(items: dict[str, str], deps: dict[str, str]) -> str:
    h = _hasher()
    for section in (items, deps):
        for key in sorted(section):
            h.update(f"{key}\0{section[key]}\n".encode("utf-8", "surrogateescape"))
        h.update(b"\1")
    return h.hexdigest()


def read_marker(path: str) -> dict | None:
    """The recorded manifest, or None for no marker or one this tool did not write (an empty .done)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("version") == VERSION else None


def write_marker(path: str, items: dict[str, str], deps: dict[str, str]) -> None:
    record = {"version": VERSION, "fingerprint": fingerprint(items, deps), "items": items, "deps": deps}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        json.dump(record, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def _short(key: str) -> str:
    kind, _, value = key.partition(":")
    return value if kind == "opt" else f"{kind} {value}"


def why_stale(old: dict | None, items: dict[str, str], deps: dict[str, str], marker: str) -> str | None:
    """One line saying why the recorded manifest differs from the current one; None when it does not."""
    if old is None:
        return "not made yet" if not os.path.exists(marker) else f"{marker} records no fingerprint (older recipe)"
    if old.get("fingerprint") == fingerprint(items, deps):
        return None
    before = {**old.get("items", {}), **old.get("deps", {})}
    now = {**items, **deps}
    changed = [k for k in now if k in before and before[k] != now[k]]
    changed += [k for k in now if k not in before] + [k for k in before if k not in now]
    shown = ", ".join(_short(k) for k in changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
    return f"changed: {shown}" if shown else "changed"


def check(marker: str, pending: str, items: list[str], deps_file: str | None, force: bool) -> int:
    current = manifest_of(items)
    deps = manifest_of(read_deps(deps_file))
    reason = "forced (--force true)" if force else why_stale(read_marker(marker), current, deps, marker)
    if reason is None:
        return 0
    write_marker(pending, current, deps)
    print(reason)
    return 1


def commit(marker: str, pending: str, deps_file: str | None) -> int:
    record = read_marker(pending)
    if record is None:
        print(f"stage_stamp.py: {pending} is missing or unreadable; run check first", file=sys.stderr)
        return 2
    write_marker(marker, record["items"], manifest_of(read_deps(deps_file)))
    os.remove(pending)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="exit 0 when MARKER matches the items, else write PENDING and exit 1")
    p_check.add_argument("marker")
    p_check.add_argument("pending")
    p_check.add_argument("items", nargs="*")
    p_check.add_argument("--deps", help="file of further items, written by the stage itself")
    p_check.add_argument("--force", action="store_true", help="treat the stage as stale")
    p_commit = sub.add_parser("commit", help="record PENDING as MARKER once the stage succeeded")
    p_commit.add_argument("marker")
    p_commit.add_argument("pending")
    p_commit.add_argument("--deps", help="the deps file the stage has just written")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            return check(args.marker, args.pending, args.items, args.deps, args.force)
        return commit(args.marker, args.pending, args.deps)
    except (ItemError, OSError) as error:
        print(f"stage_stamp.py: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
