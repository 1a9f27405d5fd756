rule eval_loss:
    """Held-out next-token loss and perplexity of our model, read straight from the DCP checkpoint (a masked
    LM: masked-token loss and accuracy, the most-frequent-token baseline, optionally pseudo-perplexity).
    """
    input:
        checkpoint="results/runs/{run}/checkpoints/step-{step}",
        shards=loss_eval_shards,
    output:
        result="results/runs/{run}/eval/step-{step}/{task}.json",
    log:
        "results/logs/eval/{run}/step-{step}/{task}.log",
    benchmark:
        "results/benchmarks/eval/{run}/step-{step}/{task}.tsv"
    wildcard_constraints:
        task=names_of_kind(config.get("evals", {}), "loss"),
    conda:
        LMREPRO_ENV
    params:
        max_tokens=lookup(dpath="evals/{task}/max_tokens", within=config),
        pppl_tokens=lookup(dpath="evals/{task}/pseudo_perplexity_tokens", within=config),
    shell:
        "python workflow/scripts/eval_loss.py --checkpoint {input.checkpoint} --shards {input.shards} "
        "--task {wildcards.task} --max-tokens {params.max_tokens} "
        "--pseudo-perplexity-tokens {params.pppl_tokens} --out {output.result} > {log} 2>&1"


rule eval_multiple_choice:
    """A HellaSwag-format multiple-choice set scored by lm-eval on the exported Hugging Face model."""
    input:
        export=rules.export_checkpoint.output.export,
        raw=mc_eval_raw,
    output:
        result="results/runs/{run}/eval/step-{step}/{task}.json",
    log:
        "results/logs/eval/{run}/step-{step}/{task}.log",
    benchmark:
        "results/benchmarks/eval/{run}/step-{step}/{task}.tsv"
    wildcard_constraints:
        task=names_of_kind(config.get("evals", {}), "multiple_choice"),
    conda:
        LMREPRO_ENV
    params:
        file=lookup(dpath="evals/{task}/file", within=config),
        limit=mc_eval_limit,
    shell:
        "python workflow/scripts/eval_multiple_choice.py --export {input.export} "
        "--jsonl {input.raw}/{params.file} --task {wildcards.task} {params.limit} --out {output.result} "
        "> {log} 2>&1"
