"""Make a segment checkpoint model-only (runs.<run>.keep_optimizer_last_k); writes what it freed as JSON."""

import argparse

from lmrepro.checkpoint.retention import drop_optimizer_state
from lmrepro.io import write_json
from lmrepro.logs import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="results/runs/{run}/checkpoints/step-{N}")
    parser.add_argument("--out", required=True, help="results/runs/{run}/retention/step-{N}.json")
    args = parser.parse_args()
    write_json(args.out, drop_optimizer_state(args.checkpoint))


if __name__ == "__main__":
    run_main(main)
