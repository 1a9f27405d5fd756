"""What the user hands the workflow — config files and the command line — read strictly and checked while
the Snakefile is parsed, a user error reported in one line, without a traceback, before any job runs.

- :func:`load_config_file`: YAML syntax errors name the file, line and column; a key given twice in one
  mapping (a copied run block) is refused, naming both lines: PyYAML would silently keep the last one.
- :func:`schema_error`: the JSON-schema error of a config as ``runs.tiny.steps: '200' is not of type
  'integer'`` (the key path first, then what would be valid).
- :func:`check_command_line`: `--cores 0` (Snakemake would wait forever at "Select jobs to execute") and a
  target under results/runs/<run>/ that names no configured run (the valid runs are listed).
- :func:`stop_on_user_error`: the Snakefile wraps its parse-time checks in it; a ValueError or
  FileNotFoundError (the checks' way of naming a bad key or file) prints its message and exits 1, which
  Snakemake passes on without a traceback and before it builds the DAG.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml


class ConfigFileError(ValueError):
    """A config file that cannot be read as the user meant it (syntax, duplicate keys)."""


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The YAML mapping in `path`; ConfigFileError names the file, line and column of a syntax error or a
    duplicate key, FileNotFoundError a file that does not exist."""
    path = _shown(Path(path))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigFileError(f"{where}: YAML syntax error: {e.problem or e.context}") from None
    if node is None:
        raise ConfigFileError(f"{path}: the config file is empty")
    _refuse_duplicate_keys(node, path, "")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigFileError(f"{path}: a config file holds a mapping (datasets:, runs:, …), not a {kind}")
    return data


def _shown(path: Path) -> Path:
    """`path` relative to the working directory if it is below it (Snakemake makes --configfile absolute)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def _refuse_duplicate_keys(node: yaml.Node, path: Path, where: str) -> None:
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, path, f"{where}[{i}]")
        return
    if not isinstance(node, yaml.MappingNode):
        return
    first_line: dict[str, int] = {}
    for key, value in node.value:
        name = str(key.value)
        key_path = f"{where}.{name}" if where else name
        if name in first_line and name != "<<":
            mark = key.start_mark
            raise ConfigFileError(
                f"{path}:{mark.line + 1}:{mark.column + 1}: duplicate key {key_path} (first at line "
                f"{first_line[name]}); each key appears once per mapping: rename or remove one (a copied "
                "block?)"
            )
        first_line[name] = key.start_mark.line + 1
        _refuse_duplicate_keys(value, path, key_path)


# -------------------------------------------------------------------------------------------- schema


def check_schema(config: dict[str, Any], schema_file: str | Path) -> None:
    """ValueError with :func:`schema_error`'s line if `config` does not follow the schema."""
    error = schema_error(config, yaml.safe_load(Path(schema_file).read_text()))
    if error:
        raise ValueError(error)


def schema_error(config: dict[str, Any], schema: dict[str, Any]) -> str | None:
    """The first JSON-schema error of `config` as one line, the key path first; None if it is valid."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if not errors:
        return None
    return _describe(jsonschema.exceptions.best_match(errors), config)


def _key_path(parts: Any) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "config"


def _describe(error: Any, config: dict[str, Any]) -> str:
    where = _key_path(error.absolute_path)
    if "propertyNames" in error.schema_path:
        return (
            f"{where}: name {error.instance!r} is not allowed; a name is letters, digits and _ . - (not . "
            "or .., it names a folder under results/)"
        )
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(known))
        return f"{where}: unknown key {unknown[0] if unknown else '?'}; valid keys here: {known}"
    if error.validator == "not" and error.schema.get("not") == {}:
        parent = _entry(config, list(error.absolute_path)[:-1])
        variant = next(
            (f"{k} {parent[k]}" for k in ("kind", "source", "format") if k in parent), "this entry"
        )
        return f"{where}: not a key of {variant} (config/README.md lists the keys of each kind)"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not valid; valid: {error.validator_value}"
    return f"{where}: {error.message}"


def _entry(config: Any, parts: list) -> dict:
    for part in parts:
        config = config[part]
    return config if isinstance(config, dict) else {}


# ------------------------------------------------------------------------------------- command line

_RUN_TARGET = re.compile(r"^(?:\./)?results/runs/([^/]+)(?:/|$)")


def check_command_line(cores: int | None, targets: list[str], runs: dict[str, Any]) -> None:
    """Refuse `--cores 0` and targets of runs the config does not have (ValueError naming them)."""
    if cores == 0:
        raise ValueError(
            "--cores 0: no job could ever start (Snakemake would wait at 'Select jobs to execute...' "
            "forever); use --cores N with N >= 1, or --cores all"
        )
    for target in targets:
        match = _RUN_TARGET.match(str(target))
        if match and match[1] not in runs:
            raise ValueError(
                f"target {target}: {match[1]!r} is not a run of the config; valid runs: {sorted(runs)}"
            )


def command_line_targets(argv: list[str] | None = None) -> list[str]:
    """The targets on the `snakemake` command line (none when Snakemake runs otherwise, e.g. as a job)."""
    argv = sys.argv if argv is None else argv
    if not argv or "snakemake" not in str(argv[0]):
        return []
    from snakemake.cli import get_argument_parser

    try:
        args, _ = get_argument_parser().parse_known_args(argv[1:])
    except (SystemExit, Exception):  # Snakemake parsed this command line already; never fail on it here
        return []
    return [str(t) for t in (args.targets or [])]


# ------------------------------------------------------------------------------------------ reporting


@contextlib.contextmanager
def stop_on_user_error() -> Iterator[None]:
    """Print a user error's message (its first line names the key or file) and exit 1, no traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError) as e:
        print(str(e), file=sys.stderr, flush=True)
        raise SystemExit(1) from None
