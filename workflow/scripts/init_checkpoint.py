"""Write a run's step-0 checkpoint (model only, DCP): the seeded random init, a converted base, or another
run's segment checkpoint (an init chain)."""

import argparse
from pathlib import Path

from lmrepro.config import load_job_config
from lmrepro.logs import run_main
from lmrepro.train.trainer import init_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="results/runs/{run}/train.toml")
    parser.add_argument("--save-to", required=True, help="results/runs/{run}/checkpoints/step-0")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--base", help="a converted base, results/init/{base}/dcp (runs.<run>.init)")
    source.add_argument("--from-run", help="another run's results/runs/{run}/checkpoints/step-N (init chain)")
    args = parser.parse_args()
    base = Path(args.base) if args.base else None
    from_run = Path(args.from_run) if args.from_run else None
    meta = init_checkpoint(load_job_config(args.config), Path(args.save_to), base=base, from_run=from_run)
    print(f"wrote {args.save_to} ({meta['checkpoint_id']})")


if __name__ == "__main__":
    run_main(main)
