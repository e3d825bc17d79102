"""conf/slurm.conf: how dispatcher options become sbatch flags, in the spirit of Kaldi's slurm.pl.

Lines (`#` starts a comment):
  command sbatch --export=ALL        the submit command (exactly one such line)
  option mem=* --mem=$0              --mem VALUE adds `--mem=VALUE` ($0 is the value)
  option gpu=0                       an exact value wins over `*`; no flags: add nothing
  default gpu=0                      the value used when the option is not given
An option given on the command line (or by `default`) without a matching rule is an error.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path


class SlurmConfigError(ValueError):
    """A malformed config line, or an option the config has no rule for."""


@dataclass(frozen=True)
class SlurmConfig:
    path: str
    command: list[str]
    rules: dict[str, dict[str, list[str]]]  # option name -> value or "*" -> flags
    defaults: dict[str, str]

    def flags(self, options: dict[str, str]) -> list[list[str]]:
        """The sbatch flags for `options` (plus defaults), one list per option, in option order."""
        out = []
        for name, value in {**self.defaults, **options}.items():
            rule = self.rules.get(name)
            if rule is None:
                raise SlurmConfigError(f"{self.path}: no `option {name}=...` rule for --{name}")
            if value in rule:
                flags = rule[value]
            elif "*" in rule:
                flags = [f.replace("$0", value) for f in rule["*"]]
            else:
                raise SlurmConfigError(f"{self.path}: no rule for --{name} {value} (have {', '.join(rule)})")
            if flags:
                out.append(flags)
        return out


def _name_value(word: str, where: str) -> tuple[str, str]:
    name, eq, value = word.partition("=")
    if not (eq and name.isidentifier() and value):
        raise SlurmConfigError(f"{where}: expected NAME=VALUE, got {word!r}")
    return name, value


def read_slurm_config(path: str | Path) -> SlurmConfig:
    """Parse a slurm.conf file; errors name the file and line."""
    command: list[str] | None = None
    rules: dict[str, dict[str, list[str]]] = {}
    defaults: dict[str, str] = {}
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SlurmConfigError(f"cannot read Slurm dispatch config: {e}") from e
    for lineno, line in enumerate(text.splitlines(), 1):
        where = f"{path}:{lineno}"
        try:
            words = shlex.split(line, comments=True)
        except ValueError as e:
            raise SlurmConfigError(f"{where}: {e}") from e
        if not words:
            continue
        key, args = words[0], words[1:]
        if key == "command" and args:
            if command is not None:
                raise SlurmConfigError(f"{where}: a second `command` line")
            command = args
        elif key == "option" and args:
            name, value = _name_value(args[0], where)
            rules.setdefault(name, {})[value] = args[1:]
        elif key == "default" and len(args) == 1:
            name, value = _name_value(args[0], where)
            defaults[name] = value
        else:
            raise SlurmConfigError(f"{where}: expected `command ...`, `option NAME=VALUE [flags]` "
                                   f"or `default NAME=VALUE`, got {line.strip()!r}")
    if command is None:
        raise SlurmConfigError(f"{path}: no `command` line")
    return SlurmConfig(str(path), command, rules, defaults)
