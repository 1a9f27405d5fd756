"""Dataset sources: where a dataset's raw documents come from, prepared into results/data/{dataset}/raw/.

``raw/manifest.json`` is what later steps read: per split the data files (relative to raw/, or absolute
for local data that is not copied) and the text field, plus provenance (source, repo, resolved commit,
sizes, sha256). Sources:

* ``synthetic`` — generated ``{train,heldout,mc}.jsonl`` (``kind: spikes``: the Neural Pile stand-in,
  ``{train,test}.parquet``; ``layout: wikitext``: the WikiText-2 stand-in, ``{train,validation,test}.parquet``
  with a ``text`` column, ``lmrepro.data.synthetic_wikitext``; other ``layout``s: the corpus in a seed's
  format, ``lmrepro.data.synthetic_formats``);
* ``local`` — a split given as one JSONL file is copied to ``raw/<split>.jsonl``; folders and globs of
  JSONL/Parquet/Arrow/text files are read in place (a cluster file system holds them already);
* ``hub`` — ``huggingface_hub.snapshot_download`` into the Hugging Face cache (``HF_HUB_CACHE``; parallel,
  resumable, ``HF_TOKEN`` from the environment, ``HF_HUB_OFFLINE=1`` reads only the cache), and
  ``raw/snapshot`` is a link to the cached snapshot of the pinned revision.

A dataset of ``kind: spikes`` (spike-count rows, the Neural Pile) also records ``spikes`` in the manifest:
its row spec (``source_dataset`` lab filter, ``n_fixed``, ``n_fixed_seed``) and the rows of each lab per
split, read from the ``source_dataset`` column; a lab the filter names that no split holds stops here,
naming the lab and the labs present.
"""

from __future__ import annotations

import concurrent.futures as cf
import fnmatch
import glob
import json
import logging
import os
import re
import shutil
from pathlib import Path

from lmrepro.data import synthetic_formats, synthetic_spikes, synthetic_wikitext
from lmrepro.data.readers import FORMATS, LAB_COLUMN, file_format, lab_counts
from lmrepro.data.spikes import SpikeRows
from lmrepro.data.synthetic import generate_corpus
from lmrepro.io import atomic_folder, file_sha256, read_json, write_json

log = logging.getLogger(__name__)

_GLOB_CHARS = re.compile(r"[*?\[]")
_LFS_SHA256 = re.compile(r"[0-9a-f]{64}")


def prepare_dataset(spec: dict, out_dir: str | Path, *, name: str = "dataset", max_workers: int = 8) -> dict:
    """Write raw/ (split files or links, manifest.json); the folder appears atomically."""
    with atomic_folder(out_dir) as tmp:
        manifest = _prepare(spec, tmp, name, max_workers)
        write_json(tmp / "manifest.json", manifest)
    log.info("prepared %s: splits %s", out_dir, ", ".join(sorted(manifest["splits"])))
    return manifest


def _prepare(spec: dict, tmp: Path, name: str, max_workers: int) -> dict:
    source = spec["source"]
    if source == "synthetic" and spec.get("kind") == "spikes":
        paths = synthetic_spikes.write(
            tmp,
            seed=spec.get("seed", 0),
            n_train=spec.get("num_train_rows", 256),
            n_test=spec.get("num_test_rows", 32),
            bad_rows=spec.get("num_bad_rows", 0),
        )
        files = {Path(f).name: Path(f) for f in paths.values()}
        manifest = {"source": "synthetic", "files": _hash_files(files, max_workers)}
        manifest["splits"] = {split: {"files": [Path(f).name]} for split, f in paths.items()}
    elif source == "synthetic" and spec.get("layout") == "wikitext":
        paths = synthetic_wikitext.write(
            tmp,
            seed=spec.get("seed", 1234),
            num_train_articles=spec.get("num_train_documents", 200),
            num_heldout_articles=spec.get("num_heldout_documents", 20),
        )
        files = {Path(f).name: Path(f) for f in paths.values()}
        manifest = {"source": "synthetic", "layout": "wikitext", "files": _hash_files(files, max_workers)}
        manifest["splits"] = {split: {"files": [Path(f).name]} for split, f in paths.items()}
    elif source == "synthetic" and spec.get("layout", "corpus") != "corpus":
        names = synthetic_formats.write(
            tmp,
            spec["layout"],
            seed=spec.get("seed", 1234),
            num_train=spec.get("num_train_documents", 20000),
            num_heldout=spec.get("num_heldout_documents", 500),
            num_mc=spec.get("num_mc_examples", 200),
        )
        files = {name: tmp / name for name in names.values()}
        manifest = {"source": "synthetic", "layout": spec["layout"], "files": _hash_files(files, max_workers)}
        manifest["splits"] = {split: {"files": [name]} for split, name in names.items()}
    elif source == "synthetic":
        manifest = generate_corpus(
            tmp,
            seed=spec.get("seed", 1234),
            num_train_documents=spec.get("num_train_documents", 20000),
            num_heldout_documents=spec.get("num_heldout_documents", 500),
            num_mc_examples=spec.get("num_mc_examples", 200),
        )
        manifest["source"] = "synthetic"
        manifest["splits"] = {Path(f).stem: {"files": [f]} for f in manifest["files"]}
    elif source == "local":
        manifest = _prepare_local(spec, tmp, name, max_workers)
    elif source == "hub":
        manifest = _prepare_hub(spec, tmp, name, max_workers)
    else:
        raise ValueError(f"datasets.{name}.source = {source!r} is not valid; valid: synthetic, local, hub")
    if spec.get("kind", "text") == "spikes":
        manifest["kind"] = "spikes"
        manifest["spikes"] = _spike_rows_manifest(spec, manifest, tmp, name)
    else:
        manifest["text_field"] = spec.get("text_field", "text")
    return manifest


# ----------------------------------------------------------------------------------------- spikes


def split_files(raw_dir: str | Path, split: str) -> tuple[list[Path], str]:
    """The data files and text field of one split of a prepared dataset (raw/manifest.json)."""
    raw_dir = Path(raw_dir)
    manifest_file = raw_dir / "manifest.json"
    if not manifest_file.is_file():
        raise FileNotFoundError(f"{manifest_file} does not exist (run the prepare_dataset step first)")
    manifest = json.loads(manifest_file.read_text())
    splits = manifest.get("splits") or {Path(f).stem: {"files": [f]} for f in manifest.get("files", {})}
    if split not in splits:
        raise ValueError(f"{raw_dir}: the dataset has no split {split!r}; valid: {sorted(splits)}")
    return [raw_dir / f for f in splits[split]["files"]], manifest.get("text_field", "text")


def spike_rows_of(raw_dir: str | Path) -> SpikeRows | None:
    """The row spec (lab filter, n_fixed) a prepared spike dataset's manifest records; None for text."""
    manifest = read_json(Path(raw_dir) / "manifest.json")
    if manifest.get("kind", "text") != "spikes":
        return None
    return SpikeRows.from_dict(manifest["spikes"])


def _spike_rows_manifest(spec: dict, manifest: dict, raw: Path, name: str) -> dict:
    """The row spec and the rows per lab and split; a lab the filter names must be in the data."""
    rows = SpikeRows.from_dict(spec)
    labs: dict[str, dict[str, int]] = {}
    without_column: list[str] = []
    for split, entry in manifest["splits"].items():
        per_lab: dict[str, int] = {}
        for f in entry["files"]:
            path = Path(f) if Path(f).is_absolute() else raw / f
            counts = lab_counts(path)
            if counts is None:
                without_column.append(str(f))
                continue
            for lab, n in counts.items():
                per_lab[lab] = per_lab.get(lab, 0) + n
        labs[split] = dict(sorted(per_lab.items()))
    if rows.source_dataset:
        if without_column:
            raise ValueError(
                f"datasets.{name}.source_dataset: {without_column[0]} has no {LAB_COLUMN!r} column, so "
                "the lab filter cannot apply; remove source_dataset for a single-lab dataset"
            )
        present = sorted({lab for per_lab in labs.values() for lab in per_lab})
        for lab in rows.source_dataset:
            if lab not in present:
                raise ValueError(
                    f"datasets.{name}.source_dataset: lab {lab!r} is not in the data; labs present: "
                    f"{', '.join(present) or 'none'}"
                )
        for split, per_lab in labs.items():
            missing = [lab for lab in rows.source_dataset if lab not in per_lab]
            if missing:
                log.warning("dataset %s: split %s has no rows of %s", name, split, ", ".join(missing))
    return {**rows.to_dict(), "rows_per_lab": labs}


def _patterns(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _hash_files(paths: dict[str, Path], max_workers: int) -> dict[str, dict]:
    """{key: {num_bytes, sha256}} of files, hashed in parallel threads (hashlib releases the GIL)."""
    with cf.ThreadPoolExecutor(max(1, max_workers)) as pool:
        digests = dict(zip(paths, pool.map(file_sha256, paths.values()), strict=True))
    return {key: {"num_bytes": paths[key].stat().st_size, "sha256": digests[key]} for key in paths}


def _check_disjoint(splits: dict[str, list[str]], where: str) -> None:
    seen: dict[str, str] = {}
    for split, files in splits.items():
        for f in files:
            if f in seen:
                raise ValueError(f"{where}: {f} is in split {seen[f]!r} and in split {split!r}")
            seen[f] = split
        if not files:
            raise ValueError(f"{where}.{split}: no files")


# ------------------------------------------------------------------------------------------------ local


def select_local_files(
    patterns: str | list[str], where: str, root: str | Path = ".", *, expand_folders: bool = True
) -> list[Path]:
    """The one reading of a local split's patterns (`datasets.<name>.files.<split>`): the files they name.

    Each pattern is a file, a folder (every data file below it, sorted) or a glob (`**` recursive);
    `!glob` excludes the selected files it matches. Relative patterns, and the paths that excludes are
    matched against, are relative to `root`: the workflow's working directory, where Snakemake runs the
    jobs (the default "." — the current directory). Returned paths are `root / <path as the pattern
    spells it>`. A path that does not exist, a glob that matches no file or a folder without a data file
    raises FileNotFoundError naming `where`. `expand_folders=False` returns a folder itself (checked to
    hold a data file), which is what Snakemake tracks as an input.
    """
    root = Path(root)
    patterns = _patterns(patterns)
    selected: list[str] = []
    for pattern in (p for p in patterns if not p.startswith("!")):
        path = root / pattern
        if _GLOB_CHARS.search(pattern):
            found = glob.glob(pattern, root_dir=root, recursive=True)
            matches = [m for m in sorted(found) if (root / m).is_file()]
            if not matches:
                raise FileNotFoundError(f"{where}: pattern {pattern} matches no file")
            selected += matches
        elif path.is_dir():
            below = (p.relative_to(path) for p in path.rglob("*") if p.is_file() and _is_data_file(p))
            matches = sorted(str(Path(pattern) / p) for p in below)
            if not matches:
                raise FileNotFoundError(
                    f"{where}: folder {pattern} holds no data file ({', '.join(FORMATS)})"
                )
            selected += matches if expand_folders else [pattern]
        elif path.is_file():
            selected.append(pattern)
        else:
            raise FileNotFoundError(f"{where}: file {pattern} does not exist")
    excluded = [p[1:] for p in patterns if p.startswith("!")]
    return [root / f for f in selected if not any(fnmatch.fnmatch(f, x) for x in excluded)]


def local_input_paths(spec: dict, root: str | Path = ".", *, name: str = "dataset") -> list[str]:
    """The files and folders a local dataset reads, as select_local_files finds them (the Snakemake inputs
    of prepare_dataset: an edit reruns it). Also the parse-time check that every pattern finds a file."""
    if spec.get("source") != "local":
        return []
    return [
        str(f)
        for split, value in spec["files"].items()
        for f in select_local_files(value, f"datasets.{name}.files.{split}", root, expand_folders=False)
    ]


def _is_data_file(path: Path) -> bool:
    try:
        file_format(path)
    except ValueError:
        return False
    return True


def _prepare_local(spec: dict, tmp: Path, name: str, max_workers: int) -> dict:
    splits: dict[str, list[str]] = {}  # split -> manifest keys (relative to raw/, or absolute)
    origins: dict[str, list[str]] = {}  # split -> the files it reads, resolved (to find overlaps)
    paths: dict[str, Path] = {}
    copied: dict[str, str] = {}
    for split, value in spec["files"].items():
        patterns = _patterns(value)
        single = len(patterns) == 1 and not _GLOB_CHARS.search(patterns[0]) and Path(patterns[0]).is_file()
        if single and file_format(patterns[0]) == "jsonl":  # a small file: copied, as raw/ always had it
            key = f"{split}.jsonl"
            shutil.copyfile(patterns[0], tmp / key)
            splits[split], paths[key] = [key], tmp / key
            copied[key] = str(Path(patterns[0]).resolve())
            origins[split] = [copied[key]]
            continue
        files = select_local_files(patterns, f"datasets.{name}.files.{split}")  # relative to the cwd
        for f in files:
            file_format(f)  # an unsupported file type stops here, named
        splits[split] = origins[split] = [str(f.resolve()) for f in files]
        paths.update({k: Path(k) for k in splits[split]})
    _check_disjoint(origins, f"datasets.{name}.files")
    files_meta = _hash_files(paths, max_workers)
    for key, origin in copied.items():
        files_meta[key] = {"origin": origin, **files_meta[key]}
    return {"source": "local", "files": files_meta, "splits": {s: {"files": f} for s, f in splits.items()}}


# -------------------------------------------------------------------------------------------------- hub


def _hub_error(name: str, spec: dict, problem: str) -> str:
    from huggingface_hub import constants

    repo_type = spec.get("repo_type", "dataset")
    include = " ".join(f"--include '{p}'" for p in hub_allow_patterns(spec))
    return (
        f"datasets.{name}: {spec['repo']} ({repo_type}) at revision {spec['revision']}: {problem}. "
        f"Hugging Face cache: {constants.HF_HUB_CACHE}, HF_HUB_OFFLINE={int(constants.HF_HUB_OFFLINE)}. "
        "To pre-populate the cache, run on a machine with network access and the same HF_HUB_CACHE/HF_HOME: "
        f"hf download {spec['repo']} --repo-type {repo_type} --revision {spec['revision']} {include} "
        "(set HF_TOKEN for gated or private repositories)"
    )


def hub_allow_patterns(spec: dict) -> list[str]:
    """What to download: `allow_patterns`, else the split globs; relative to `subset` when given."""
    prefix = spec["subset"].strip("/") + "/" if spec.get("subset") else ""
    if spec.get("allow_patterns"):
        patterns = list(spec["allow_patterns"])
    else:
        patterns = [p for value in spec["splits"].values() for p in _patterns(value) if not p.startswith("!")]
    return sorted({prefix + p for p in patterns})


def _select_hub_files(snapshot: Path, spec: dict, split: str, where: str) -> list[str]:
    """Snapshot files (relative paths) matching a split's fnmatch patterns, `!pattern` excluding."""
    prefix = spec["subset"].strip("/") + "/" if spec.get("subset") else ""
    listing = sorted(
        p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file() or p.is_symlink()
    )
    patterns = _patterns(spec["splits"][split])
    include = [prefix + p for p in patterns if not p.startswith("!")]
    exclude = [prefix + p[1:] for p in patterns if p.startswith("!")]
    files = [
        f
        for f in listing
        if any(fnmatch.fnmatch(f, p) for p in include) and not any(fnmatch.fnmatch(f, p) for p in exclude)
    ]
    if not files:
        shown = ", ".join(listing[:8]) + (" …" if len(listing) > 8 else "")
        raise ValueError(f"{where}: {include} match no file of the snapshot (it holds: {shown or 'nothing'})")
    for f in files:
        file_format(f)
    return files


def _prepare_hub(spec: dict, tmp: Path, name: str, max_workers: int) -> dict:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_type = spec.get("repo_type", "dataset")
    allow = hub_allow_patterns(spec)
    log.info(
        "dataset %s: %s (%s) at revision %s, files %s; cache %s, %d workers, offline %s, HF_TOKEN %s",
        name, spec["repo"], repo_type, spec["revision"], allow, constants.HF_HUB_CACHE, max_workers,
        bool(constants.HF_HUB_OFFLINE), "set" if os.environ.get("HF_TOKEN") else "not set",
    )  # fmt: skip
    try:
        snapshot = Path(
            snapshot_download(
                spec["repo"],
                repo_type=repo_type,
                revision=spec["revision"],
                allow_patterns=allow,
                max_workers=max_workers,
            )
        )
    except LocalEntryNotFoundError as e:
        problem = "is missing from the cache or incomplete, and the Hub cannot be reached"
        raise FileNotFoundError(_hub_error(name, spec, f"{problem} ({type(e).__name__})")) from None
    except RevisionNotFoundError:
        raise ValueError(_hub_error(name, spec, "the revision does not exist")) from None
    except RepositoryNotFoundError:
        raise ValueError(_hub_error(name, spec, "no such repository, or it is gated/private")) from None
    except HfHubHTTPError as e:
        raise ValueError(_hub_error(name, spec, f"the Hub answered {e}")) from None
    commit = snapshot.name
    if spec["revision"] != commit:
        log.warning(
            "dataset %s: revision %r is a branch or tag and can move; pin the commit %s in config.yaml",
            name, spec["revision"], commit,
        )  # fmt: skip
    (tmp / "snapshot").symlink_to(snapshot.resolve(), target_is_directory=True)
    splits = {
        split: _select_hub_files(snapshot, spec, split, f"datasets.{name}.splits.{split}")
        for split in spec["splits"]
    }
    _check_disjoint(splits, f"datasets.{name}.splits")
    paths = {f"snapshot/{f}": snapshot / f for fs in splits.values() for f in fs}
    for key, path in paths.items():
        if not path.exists():
            raise FileNotFoundError(_hub_error(name, spec, f"{key} is a broken link into the cache ({path})"))
    files_meta = _hash_files(paths, max_workers)
    for key, meta in files_meta.items():
        blob = Path(os.path.realpath(paths[key])).name
        if _LFS_SHA256.fullmatch(blob) and blob != meta["sha256"]:
            problem = f"cached file {key} is corrupted (sha256 {meta['sha256']}, Hub {blob})"
            raise ValueError(_hub_error(name, spec, f"{problem}; delete it from the cache and rerun"))
    return {
        "source": "hub",
        "repo": spec["repo"],
        "repo_type": repo_type,
        "revision": spec["revision"],
        "commit": commit,
        "subset": spec.get("subset"),
        "allow_patterns": allow,
        "snapshot": str(snapshot),
        "files": files_meta,
        "splits": {s: {"files": [f"snapshot/{f}" for f in fs]} for s, fs in splits.items()},
    }
