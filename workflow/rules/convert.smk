rule convert_base:
    """A base checkpoint (Hugging Face or Meta Llama folder) as DCP, the step-0 of runs that name it in
    runs.<run>.init; conversion.json lists every missing, unexpected and reshaped key.
    """
    input:
        source=lookup(dpath="bases/{base}/path", within=config),
    output:
        dcp=directory("results/init/{base}/dcp"),
    log:
        "results/logs/convert_base/{base}.log",
    benchmark:
        "results/benchmarks/convert_base/{base}.tsv"
    conda:
        LMREPRO_ENV
    params:
        format=lookup(dpath="bases/{base}/format", within=config),
        vocab=lookup(dpath="bases/{base}/vocab", within=config),
    shell:
        "python workflow/scripts/convert_to_dcp.py --format {params.format} --source {input.source:q} "
        "--vocab {params.vocab} --out {output.dcp:q} > {log:q} 2>&1"
