"""Convert a base checkpoint (Hugging Face or Meta Llama folder) into a DCP folder for step-0 init."""

import argparse
import json

from lmrepro.checkpoint.convert import FORMATS, VOCAB_POLICIES, convert_to_dcp
from lmrepro.logs import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--format", required=True, choices=FORMATS, help="hf or meta (bases.<name>.format)")
    parser.add_argument("--source", required=True, help="the base's folder (bases.<name>.path)")
    parser.add_argument("--vocab", default="keep", choices=VOCAB_POLICIES, help="bases.<name>.vocab")
    parser.add_argument("--out", required=True, help="results/init/{base}/dcp")
    args = parser.parse_args()
    record = convert_to_dcp(args.format, args.source, args.out, vocab=args.vocab)
    summary = {k: record[k] for k in ("tensors", "parameters", "dtypes", "missing", "unexpected")}
    print(f"wrote {args.out}: {json.dumps(summary)}")


if __name__ == "__main__":
    run_main(main)
