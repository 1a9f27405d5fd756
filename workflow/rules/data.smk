rule prepare_dataset:
    """Raw documents of one dataset + manifest.json: generated (synthetic), local files, or a Hub snapshot.

    Hub data goes to the Hugging Face cache (HF_HUB_CACHE / HF_HOME, HF_TOKEN, HF_HUB_OFFLINE from the
    environment); raw/snapshot links to the cached snapshot of the pinned revision.
    """
    input:
        files=dataset_local_files,
    output:
        raw=directory("results/data/{dataset}/raw"),
    log:
        "results/logs/prepare_dataset/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare_dataset/{dataset}.tsv"
    conda:
        LMREPRO_ENV
    threads: download_threads
    params:
        spec=dataset_spec,
    shell:
        "python workflow/scripts/prepare_dataset.py --spec {params.spec:q} --name {wildcards.dataset} "
        "--max-workers {threads} --out {output.raw:q} > {log:q} 2>&1"


rule train_tokenizer:
    """A byte-level BPE trained with `tokenizers` on the dataset's train split (kind bpe)."""
    input:
        raw=tokenizer_train_raw,
    output:
        tokenizer="results/tokenizers/{tokenizer}/tokenizer.json",
    log:
        "results/logs/train_tokenizer/{tokenizer}.log",
    benchmark:
        "results/benchmarks/train_tokenizer/{tokenizer}.tsv"
    wildcard_constraints:
        tokenizer=names_of_kind(config["tokenizers"], "bpe"),
    conda:
        LMREPRO_ENV
    params:
        vocab_size=lookup(dpath="tokenizers/{tokenizer}/vocab_size", within=config),
    shell:
        "python workflow/scripts/train_tokenizer.py --raw {input.raw:q} "
        '--vocab-size {params.vocab_size} --out "$(dirname {output.tokenizer:q})" > {log:q} 2>&1'


rule import_tokenizer:
    """A pretrained tokenizer (kinds hf, tiktoken, sentencepiece; a local path or fetched from the Hub by
    fetch_hub), with tokenizer.json for the HF export."""
    input:
        source=pretrained_tokenizer_input,
    output:
        tokenizer="results/tokenizers/{tokenizer}/tokenizer.json",
    log:
        "results/logs/import_tokenizer/{tokenizer}.log",
    wildcard_constraints:
        tokenizer=names_of_kind(config["tokenizers"], "hf", "tiktoken", "sentencepiece"),
    conda:
        LMREPRO_ENV
    params:
        spec=tokenizer_spec,
    shell:
        "python workflow/scripts/import_tokenizer.py --spec {params.spec:q} --name {wildcards.tokenizer} "
        '--out "$(dirname {output.tokenizer:q})" > {log:q} 2>&1'


rule byte_tokenizer:
    """Byte mode for spike-count rows (kind spike_bytes): vocabulary 256, a count is its own id, SEP 255."""
    output:
        tokenizer="results/tokenizers/{tokenizer}/spike_tokenizer.json",
    log:
        "results/logs/byte_tokenizer/{tokenizer}.log",
    wildcard_constraints:
        tokenizer=names_of_kind(config["tokenizers"], "spike_bytes"),
    conda:
        LMREPRO_ENV
    shell:
        'python workflow/scripts/spike_tokenizer.py --out "$(dirname {output.tokenizer:q})" > {log:q} 2>&1'


rule patch_tokenizer:
    """A patch tokenizer (kind spike_patch): the V - 2 most frequent p0 x p1 patches of the dataset's train
    split (its lab filter and n_fixed applied) + SEP + UNK; or a folder built earlier (`path`), checked.
    """
    input:
        source=patch_tokenizer_source,
    output:
        tokenizer="results/tokenizers/{tokenizer}/spike_tokenizer.json",
    log:
        "results/logs/patch_tokenizer/{tokenizer}.log",
    benchmark:
        "results/benchmarks/patch_tokenizer/{tokenizer}.tsv"
    wildcard_constraints:
        tokenizer=names_of_kind(config["tokenizers"], "spike_patch"),
    conda:
        LMREPRO_ENV
    params:
        patch=patch_size_args,
        vocab_size=lookup(dpath="tokenizers/{tokenizer}/vocab_size", within=config),
        mode=patch_tokenizer_mode,
    shell:
        "python workflow/scripts/spike_tokenizer.py {params.mode} {input.source:q} --patch {params.patch} "
        '--vocab-size {params.vocab_size} --out "$(dirname {output.tokenizer:q})" > {log:q} 2>&1'


rule tokenize:
    """One split of a dataset encoded into binary token shards + index.json, in `threads` processes.

    Text documents joined by the dataset's packing (a change of it encodes again), or spike-count rows (kind spikes: lab filter, n_fixed, byte or patch tokens; index.json
    counts the rows kept and skipped). Finished shards wait in the undeclared
    results/data/{dataset}/{tokenizer}/.work-{split}/ until all are done, so a rerun after a failure encodes
    only the missing ones.
    """
    input:
        raw=rules.prepare_dataset.output.raw,
        tokenizer=tokenizer_anchor,
    output:
        shards=directory("results/data/{dataset}/{tokenizer}/{split}"),
    log:
        "results/logs/tokenize/{dataset}/{tokenizer}/{split}.log",
    benchmark:
        "results/benchmarks/tokenize/{dataset}/{tokenizer}/{split}.tsv"
    conda:
        LMREPRO_ENV
    threads: tokenize_threads
    params:
        packing=packing_args,
    shell:
        "python workflow/scripts/tokenize_split.py --raw {input.raw:q} --split {wildcards.split} "
        '--tokenizer "$(dirname {input.tokenizer:q})" {params.packing} --num-proc {threads} '
        "--out {output.shards:q} > {log:q} 2>&1"
