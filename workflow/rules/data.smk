rule prepare_dataset:
    """Raw documents of one dataset: generated (synthetic) or copied from local files, + manifest.json."""
    output:
        raw=directory("results/data/{dataset}/raw"),
    log:
        "results/logs/prepare_dataset/{dataset}.log",
    conda:
        LMREPRO_ENV
    params:
        spec=dataset_spec,
    shell:
        "python workflow/scripts/prepare_dataset.py --spec {params.spec:q} --out {output.raw} > {log} 2>&1"


rule train_tokenizer:
    """A byte-level BPE trained with `tokenizers` on the dataset's train split."""
    input:
        raw=tokenizer_train_raw,
    output:
        tokenizer="results/tokenizers/{tokenizer}/tokenizer.json",
    log:
        "results/logs/train_tokenizer/{tokenizer}.log",
    benchmark:
        "results/benchmarks/train_tokenizer/{tokenizer}.tsv"
    conda:
        LMREPRO_ENV
    params:
        vocab_size=tokenizer_vocab_size,
    shell:
        "python workflow/scripts/train_tokenizer.py --train {input.raw}/train.jsonl "
        "--vocab-size {params.vocab_size} --out $(dirname {output.tokenizer}) > {log} 2>&1"


rule tokenize:
    """One split of a dataset encoded into binary token shards + index.json."""
    input:
        raw="results/data/{dataset}/raw",
        tokenizer="results/tokenizers/{tokenizer}/tokenizer.json",
    output:
        shards=directory("results/data/{dataset}/{tokenizer}/{split}"),
    log:
        "results/logs/tokenize/{dataset}/{tokenizer}/{split}.log",
    benchmark:
        "results/benchmarks/tokenize/{dataset}/{tokenizer}/{split}.tsv"
    conda:
        LMREPRO_ENV
    shell:
        "python workflow/scripts/tokenize_split.py --input {input.raw}/{wildcards.split}.jsonl "
        "--tokenizer $(dirname {input.tokenizer}) --out {output.shards} > {log} 2>&1"
