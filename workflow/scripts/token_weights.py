"""training.token_weights = "inverse_frequency": 1 / frequency of every id in the run's training shards,
capped (training.token_weights_cap), SEP's weight optionally set (training.token_weights_sep); a torch-saved
1-D float tensor of length vocab_size, and a JSON beside it recording how it was made."""

import argparse

from lmrepro.logs import run_main
from lmrepro.run_config import write_run_token_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="results/runs/{run}/train.toml")
    parser.add_argument(
        "--tokenizer", required=True, help="the run's tokenizer folder (SEP of a spike tokenizer)"
    )
    parser.add_argument("--out", required=True, help="results/runs/{run}/token_weights.pt")
    args = parser.parse_args()
    write_run_token_weights(args.config, args.tokenizer, args.out)


if __name__ == "__main__":
    run_main(main)
