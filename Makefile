# make run   — set up .venv (if missing) and run the whole pipeline on the embedded default experiment
# make test  — set up .venv (if missing) and run the test suite (unit, multi-process, workflow, lint)
# make lint  — ruff, snakefmt, snakemake --lint
# make bench — the CPU benchmarks under benchmarks/ (rewrites their results files)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.lmrepro-installed
# Pinned, tested versions for these CPU machines (torch==2.13.0 is the local CPU wheel); users on other
# machines can `pip install -e ".[eval,dev,wandb,torchtune]"` with pyproject's ranges instead.
CONSTRAINTS ?= constraints/cpu.txt
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup run report test lint bench clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[eval,dev,wandb,torchtune]"
	@touch $@

setup: $(STAMP)

run: $(STAMP)
	snakemake --profile profiles/local all
	snakemake --profile profiles/local --report results/report/report.html
	@echo "results: results/report/ (report.html, summary.csv, plots)"

test: $(STAMP)
	python -m pytest

lint: $(STAMP)
	ruff check src tests workflow benchmarks
	ruff format --check src tests workflow benchmarks
	snakefmt --check Snakefile workflow/rules
	snakemake --lint

bench: $(STAMP)
	python benchmarks/tokenization/bench_tokenization.py
	python benchmarks/loader/bench_loader.py
	python benchmarks/conversion/bench_conversion.py
	python benchmarks/spikes/bench_spikes.py
	python benchmarks/ngram/bench_ngram.py
	@echo "GPU: python benchmarks/throughput/bench.py --out benchmarks/throughput/results.json (on a GPU machine)"

clean:
	rm -rf .snakemake
