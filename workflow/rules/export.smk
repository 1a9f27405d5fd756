rule export_checkpoint:
    """A checkpoint's model weights as a Hugging Face folder hf/ (+ consolidated.pth and params.json for our
    Llama; a transformers model, model.hf, is written by save_pretrained) and export.json.
    """
    input:
        checkpoint="results/runs/{run}/checkpoints/step-{step}",
        tokenizer=run_tokenizer_file,
    output:
        export=directory("results/runs/{run}/export/step-{step}"),
    log:
        "results/logs/export_checkpoint/{run}/step-{step}.log",
    benchmark:
        "results/benchmarks/export_checkpoint/{run}/step-{step}.tsv"
    conda:
        LMREPRO_ENV
    resources:
        mem_mb=job_resource("export", "mem_mb"),
        runtime=job_resource("export", "runtime"),
    params:
        dtype=lookup(dpath="runs/{run}/export_dtype", within=config),
    shell:
        "python workflow/scripts/export_checkpoint.py --checkpoint {input.checkpoint:q} "
        '--tokenizer "$(dirname {input.tokenizer:q})" --dtype {params.dtype} --out {output.export:q} > {log:q} 2>&1'
