"""config/README.md documents every key the code accepts, and no key it does not: the trainer dataclasses'
dotted keys against the trainer table, the schema's keys against the config.yaml sections' tables."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import yaml

from lmrepro.config import JobConfig

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "config" / "README.md"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
TRAINER_HEADING = "## Trainer config"


def dataclass_keys(cls: type, prefix: str = "") -> set[str]:
    """Dotted keys of a config dataclass; a list of tables (data.sources) is one key, its fields sub-keys."""
    keys = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        kind = hints[f.name]
        item = typing.get_args(kind)[0] if typing.get_origin(kind) is list and typing.get_args(kind) else None
        if dataclasses.is_dataclass(kind):
            keys |= dataclass_keys(kind, f"{key}.")
        elif item is not None and dataclasses.is_dataclass(item):
            keys |= {key} | dataclass_keys(item, f"{key}[].")
        else:
            keys.add(key)
    return keys


def schema_keys() -> set[str]:
    schema = yaml.safe_load(SCHEMA.read_text())
    keys = set()
    for section, spec in schema["properties"].items():
        entry = spec.get("additionalProperties")
        if isinstance(entry, dict) and "properties" in entry:
            keys |= {f"{section}.<name>.{key}" for key in entry["properties"]}
        else:
            keys.add(section)
    return keys


def _first_cell_keys(line: str) -> list[str]:
    cell = line.strip().strip("|").split("|")[0]
    return re.findall(r"`([^`]+)`", cell)


def documented_keys(text: str) -> tuple[set[str], set[str]]:
    """(keys of the config.yaml sections, trainer keys) named in the first column of README tables.

    A section heading is `### \\`section.<name>\\``; in the trainer table a key without a dot continues the
    section of the key before it in the same cell (`optimizer.beta1`, `beta2`, `eps`).
    """
    experiment, trainer = set(), set()
    section, in_trainer = None, False
    for line in text.splitlines():
        if line.startswith("## "):
            in_trainer = line.startswith(TRAINER_HEADING)
            section = None
        elif heading := re.match(r"### `([a-z_]+)(\.<[a-z]+>)?`", line):
            section = heading.group(1) + (heading.group(2) or "")
        elif line.startswith("|") and not re.match(r"\|\s*-", line) and not line.startswith("| key"):
            names = _first_cell_keys(line)
            if in_trainer:
                prefix = ""
                for name in names:
                    if "." in name:
                        prefix = name.rsplit(".", 1)[0] + "."
                        trainer.add(name)
                    else:
                        trainer.add(prefix + name)
            elif section:
                experiment |= {f"{section}.{name}" for name in names}
    return experiment, trainer


def test_parser_reads_sections_and_continued_keys():
    text = (
        "## `config/config.yaml`\n### `runs.<run>`\n| key | t |\n| --- | --- |\n| `steps` | int |\n"
        f"{TRAINER_HEADING}\n| key | d |\n| --- | --- |\n| `optimizer.beta1`, `beta2` | 0.9 |\n"
    )
    assert documented_keys(text) == ({"runs.<run>.steps"}, {"optimizer.beta1", "optimizer.beta2"})


def test_every_trainer_key_is_documented_and_nothing_else():
    _, documented = documented_keys(README.read_text())
    code = dataclass_keys(JobConfig)
    assert code - documented == set(), "keys missing from config/README.md"
    assert documented - code == set(), "config/README.md documents keys the trainer does not accept"


def test_every_experiment_key_is_documented_and_nothing_else():
    documented, _ = documented_keys(README.read_text())
    # headings name the entry as <name>, <task>, <run>, … ; compare with the schema's <name>
    documented = {re.sub(r"<[a-z]+>", "<name>", key) for key in documented}
    code = schema_keys()
    assert code - documented == set(), "schema keys missing from config/README.md"
    assert documented - code == set(), "config/README.md documents keys the schema does not accept"
