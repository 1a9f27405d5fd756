"""Logging setup (importable by library code and worker processes) and `run_main`, which turns a user error
into one clear line for the adapter scripts in workflow/scripts."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from lmrepro.io import DiskFullError


def setup_logging() -> None:
    rank = os.environ.get("RANK")
    prefix = f"[rank{rank}] " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
        force=True,
    )


def run_main(main: Callable[[], int | None]) -> None:
    """Run a script's main(): user errors (bad config, missing file), detected corruption (ValueError), a
    non-finite training step (FloatingPointError) and a full disk exit 2 with one line, not a trace."""
    setup_logging()
    try:
        code = main()
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, DiskFullError) as e:
        logging.getLogger("lmrepro").error("%s: %s", type(e).__name__, e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
