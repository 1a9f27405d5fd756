"""Train one segment of a run: resume from --resume-from (or a newer rolling checkpoint in state/),
train until --until-step, save --save-to. Launch with torchrun (one process per device)."""

import argparse
from pathlib import Path

import torch.distributed as dist

from lmrepro.config import load_job_config
from lmrepro.logs import run_main
from lmrepro.train.trainer import run_segment


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="results/runs/{run}/train.toml")
    parser.add_argument("--resume-from", required=True, help="checkpoint the segment starts from")
    parser.add_argument("--save-to", required=True, help="checkpoint the segment ends with")
    parser.add_argument("--until-step", type=int, required=True, help="last step of the segment")
    args = parser.parse_args()
    try:
        return run_segment(
            load_job_config(args.config), Path(args.resume_from), Path(args.save_to), args.until_step
        )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    run_main(main)
