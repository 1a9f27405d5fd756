"""Models and tokenizers from the Hugging Face Hub (`bases.<name>` and `tokenizers.<name>` with `repo`):
one `snapshot_download` of a pinned revision into the Hugging Face cache (`HF_HUB_CACHE`), run by the rule
`fetch_hub`, and the cache lookup that parse-time checks read without downloading anything.

The fetched folder is `results/hub/<section>/<name>/`: `snapshot`, a link to the cached snapshot (the cache
is what a cluster shares and what `HF_HUB_OFFLINE=1` jobs read), and `manifest.json` (repo, revision, the
resolved commit, the files).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from lmrepro.io import atomic_folder, write_json

log = logging.getLogger(__name__)

DEFAULT_ALLOW = {
    "bases": ["*.json", "*.safetensors", "*.pth", "tokenizer.model"],
    "tokenizers": ["*.json", "tokenizer.model", "*.tiktoken"],
}


def allow_patterns(section: str, spec: dict) -> list[str]:
    return list(spec.get("allow_patterns") or DEFAULT_ALLOW[section])


def fetch_command(section: str, spec: dict) -> str:
    """The command that puts the repo's files into the cache on a machine with network access."""
    include = " ".join(f"--include '{p}'" for p in allow_patterns(section, spec))
    return f"hf download {spec['repo']} --revision {spec['revision']} {include}"


def hub_error(where: str, section: str, spec: dict, problem: str) -> str:
    from huggingface_hub import constants

    return (
        f"{where}: {spec['repo']} at revision {spec['revision']}: {problem}. Hugging Face cache: "
        f"{constants.HF_HUB_CACHE}, HF_HUB_OFFLINE={int(constants.HF_HUB_OFFLINE)}. To pre-populate the "
        f"cache, run with network access and the same HF_HUB_CACHE/HF_HOME: {fetch_command(section, spec)} "
        "(set HF_TOKEN for gated repositories)"
    )


def cached_snapshot(section: str, spec: dict) -> Path | None:
    """The cached snapshot of the pinned revision with every allowed file, without any network access."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = snapshot_download(
            spec["repo"], revision=spec["revision"], allow_patterns=allow_patterns(section, spec),
            local_files_only=True,
        )  # fmt: skip
    except LocalEntryNotFoundError:
        return None
    return Path(path)


def is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def parse_time_snapshot(where: str, section: str, spec: dict) -> Path | None:
    """The cached snapshot for parse-time checks; None (checks left to the jobs) when it is not cached yet
    but can be downloaded; offline without it, a FileNotFoundError naming the repo and the command."""
    snapshot = cached_snapshot(section, spec)
    if snapshot is None and is_offline():
        raise FileNotFoundError(hub_error(where, section, spec, "is not in the cache and HF_HUB_OFFLINE=1"))
    return snapshot


def fetch(where: str, section: str, spec: dict, out_dir: str | Path, *, max_workers: int = 8) -> dict:
    """snapshot_download into the cache; out_dir/snapshot links to it, out_dir/manifest.json records it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    allow = allow_patterns(section, spec)
    log.info("%s: %s at revision %s, files %s, offline %s", where, spec["repo"], spec["revision"], allow,
             is_offline())  # fmt: skip
    try:
        snapshot = Path(
            snapshot_download(
                spec["repo"], revision=spec["revision"], allow_patterns=allow, max_workers=max_workers
            )
        )
    except LocalEntryNotFoundError as e:
        problem = (
            f"is missing from the cache or incomplete, and the Hub cannot be reached ({type(e).__name__})"
        )
        raise FileNotFoundError(hub_error(where, section, spec, problem)) from None
    except HfHubHTTPError as e:
        raise ValueError(hub_error(where, section, spec, f"the Hub answered {e}")) from None
    if spec["revision"] != snapshot.name:
        log.warning("%s: revision %r can move; pin the commit %s", where, spec["revision"], snapshot.name)
    files = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(hub_error(where, section, spec, f"no file matches {allow}"))
    manifest = {"repo": spec["repo"], "revision": spec["revision"], "commit": snapshot.name,
                "allow_patterns": allow, "snapshot": str(snapshot), "files": files}  # fmt: skip
    with atomic_folder(out_dir) as tmp:
        (tmp / "snapshot").symlink_to(os.path.realpath(snapshot), target_is_directory=True)
        write_json(tmp / "manifest.json", manifest)
    log.info("%s: %d files of commit %s → %s", where, len(files), snapshot.name, out_dir)
    return json.loads((Path(out_dir) / "manifest.json").read_text())
