rule fetch_hub:
    """A base or pretrained tokenizer from the Hugging Face Hub (`repo`, pinned `revision`, `allow_patterns`):
    snapshot_download into the Hugging Face cache (HF_HUB_CACHE / HF_HOME, HF_TOKEN, HF_HUB_OFFLINE from the
    environment); `snapshot` links to the cached snapshot, manifest.json records the resolved commit.
    """
    output:
        hub=directory("results/hub/{section}/{name}"),
    log:
        "results/logs/fetch_hub/{section}/{name}.log",
    wildcard_constraints:
        section="bases|tokenizers",
    conda:
        LMREPRO_ENV
    threads: 8
    params:
        spec=hub_spec,
    shell:
        "python workflow/scripts/fetch_hub.py --section {wildcards.section} --name {wildcards.name} "
        "--spec {params.spec:q} --max-workers {threads} --out {output.hub:q} > {log:q} 2>&1"


rule standin_base:
    """A stand-in base (`source: synthetic`): a seeded random Llama written by transformers in the base's
    format (hf: save_pretrained; meta: params.json + consolidated.00.pth)."""
    output:
        base=directory("results/init/{base}/standin"),
    log:
        "results/logs/standin_base/{base}.log",
    conda:
        LMREPRO_ENV
    params:
        spec=base_spec,
    shell:
        "python workflow/scripts/standin_base.py --spec {params.spec:q} --out {output.base:q} > {log:q} 2>&1"


rule convert_base:
    """A base checkpoint (Hugging Face or Meta Llama folder) as DCP, the step-0 of runs that name it in
    runs.<run>.init; conversion.json lists every missing, unexpected and reshaped key.
    """
    input:
        source=base_source,
    output:
        dcp=directory("results/init/{base}/dcp"),
    log:
        "results/logs/convert_base/{base}.log",
    benchmark:
        "results/benchmarks/convert_base/{base}.tsv"
    conda:
        LMREPRO_ENV
    params:
        folder=base_source_folder,
        format=lookup(dpath="bases/{base}/format", within=config),
        vocab=lookup(dpath="bases/{base}/vocab", within=config),
    shell:
        "python workflow/scripts/convert_to_dcp.py --format {params.format} --source {params.folder:q} "
        "--vocab {params.vocab} --out {output.dcp:q} > {log:q} 2>&1"
