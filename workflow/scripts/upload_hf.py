"""Upload an exported Hugging Face folder to the Hub (create_repo + upload_folder); not part of `all`.

    python workflow/scripts/upload_hf.py results/runs/tiny/export/step-200/hf me/tiny-llama --dry-run

The token comes from the environment (HF_TOKEN) and is never printed. --dry-run lists the files and
their sizes without any network access. Unset HF_HUB_OFFLINE (the Makefile sets it) for a real upload.
"""

import argparse

from lmrepro.checkpoint.export import upload_hf_folder
from lmrepro.logs import run_main


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("folder", help="an HF folder, e.g. results/runs/{run}/export/step-{N}/hf")
    parser.add_argument("repo_id", help="Hub repository, e.g. user/model-name")
    parser.add_argument("--public", action="store_true", help="a public repository (default private)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be sent; no network")
    args = parser.parse_args()
    plan = upload_hf_folder(args.folder, args.repo_id, private=not args.public, dry_run=args.dry_run)
    for path, size in plan:
        print(f"{size:>15,d}  {path}")
    total = sum(size for _, size in plan)
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} {len(plan)} files, {total / 2**20:,.1f} MiB to {args.repo_id}")


if __name__ == "__main__":
    run_main(main)
