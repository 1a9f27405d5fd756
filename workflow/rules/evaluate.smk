rule eval_loss:
    """Held-out next-token loss and perplexity of our model, read straight from the DCP checkpoint (a masked
    LM: masked-token loss and accuracy, the most-frequent-token baseline, optionally pseudo-perplexity).
    """
    input:
        checkpoint="results/runs/{run}/checkpoints/step-{step}",
        shards=loss_eval_shards,
        weights=run_weights,
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
    resources:
        gres=job_resource("eval", "gres"),
        tasks_per_gpu=job_resource("eval", "tasks_per_gpu"),
        mem_mb=job_resource("eval", "mem_mb"),
        runtime=job_resource("eval", "runtime"),
    params:
        max_tokens=lookup(dpath="evals/{task}/max_tokens", within=config),
        pppl_tokens=lookup(dpath="evals/{task}/pseudo_perplexity_tokens", within=config),
        weights=token_weights_arg,
        device=lookup(dpath="evals/{task}/device", within=config),
        dtype=lookup(dpath="evals/{task}/dtype", within=config),
    shell:
        "python workflow/scripts/eval_loss.py --checkpoint {input.checkpoint:q} --shards {input.shards:q} "
        "--task {wildcards.task} --max-tokens {params.max_tokens} {params.weights} "
        "--pseudo-perplexity-tokens {params.pppl_tokens} --device {params.device} --dtype {params.dtype} "
        "--out {output.result:q} > {log:q} 2>&1"


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
    resources:
        gres=job_resource("eval", "gres"),
        tasks_per_gpu=job_resource("eval", "tasks_per_gpu"),
        mem_mb=job_resource("eval", "mem_mb"),
        runtime=job_resource("eval", "runtime"),
    params:
        file=lookup(dpath="evals/{task}/file", within=config),
        limit=mc_eval_limit,
        device=lookup(dpath="evals/{task}/device", within=config),
        dtype=lookup(dpath="evals/{task}/dtype", within=config),
    shell:
        "python workflow/scripts/eval_multiple_choice.py --export {input.export:q} "
        "--jsonl {input.raw:q}/{params.file:q} --task {wildcards.task} {params.limit} "
        "--device {params.device} --dtype {params.dtype} --out {output.result:q} > {log:q} 2>&1"


rule eval_lm_eval:
    """One of lm-eval's built-in tasks (hellaswag, arc_easy, mmlu, gsm8k, ...) scored on the exported Hugging
    Face model, offline from the local datasets cache (checked while the workflow is parsed).
    """
    input:
        export=rules.export_checkpoint.output.export,
    output:
        result="results/runs/{run}/eval/step-{step}/{task}.json",
    log:
        "results/logs/eval/{run}/step-{step}/{task}.log",
    benchmark:
        "results/benchmarks/eval/{run}/step-{step}/{task}.tsv"
    wildcard_constraints:
        task=names_of_kind(config.get("evals", {}), "lm_eval"),
    conda:
        LMREPRO_ENV
    resources:
        gres=job_resource("eval", "gres"),
        tasks_per_gpu=job_resource("eval", "tasks_per_gpu"),
        mem_mb=job_resource("eval", "mem_mb"),
        runtime=job_resource("eval", "runtime"),
    params:
        options=lm_eval_options,
        device=lookup(dpath="evals/{task}/device", within=config),
        dtype=lookup(dpath="evals/{task}/dtype", within=config),
    shell:
        "python workflow/scripts/eval_lm_eval.py --export {input.export:q} --task {wildcards.task} "
        "{params.options} --device {params.device} --dtype {params.dtype} --out {output.result:q} "
        "> {log:q} 2>&1"


rule eval_ngram:
    """A Laplace-smoothed n-gram fitted on the run's training shards, in nats per token on the targets the
    run's loss evals score (a baseline beside the model's loss in the report)."""
    input:
        config=rules.render_train_config.output.config,
        train=ngram_train_shards,
        shards=loss_eval_shards,
    output:
        result="results/runs/{run}/baselines/{task}.json",
    log:
        "results/logs/eval_ngram/{run}/{task}.log",
    benchmark:
        "results/benchmarks/eval_ngram/{run}/{task}.tsv"
    wildcard_constraints:
        task=names_of_kind(config.get("evals", {}), "ngram"),
    conda:
        LMREPRO_ENV
    params:
        n=lookup(dpath="evals/{task}/n", within=config),
        max_tokens=lookup(dpath="evals/{task}/max_tokens", within=config),
    shell:
        "python workflow/scripts/eval_ngram.py --config {input.config:q} --train {input.train:q} "
        "--shards {input.shards:q} --task {wildcards.task} --n {params.n} --max-tokens {params.max_tokens} "
        "--out {output.result:q} > {log:q} 2>&1"


rule sample_spikes:
    """Conditional and unconditional spike-train samples of an exported checkpoint, decoded and drawn as
    rasters beside the real continuation (runs.<run>.samples; spike datasets with n_fixed).
    """
    input:
        export=rules.export_checkpoint.output.export,
        config=rules.render_train_config.output.config,
        tokenizer=run_tokenizer_file,
        raw=run_samples_raw,
    output:
        samples=directory("results/runs/{run}/samples/step-{step}"),
        rasters=report(
            "results/report/samples/{run}-step-{step}.png",
            caption="../report/samples.rst",
            category="Samples",
        ),
    log:
        "results/logs/sample_spikes/{run}/step-{step}.log",
    conda:
        LMREPRO_ENV
    params:
        options=samples_args,
    shell:
        "python workflow/scripts/sample_spikes.py --export {input.export:q} --config {input.config:q} "
        '--tokenizer "$(dirname {input.tokenizer:q})" --raw {input.raw:q} {params.options} '
        "--out {output.samples:q} > {log:q} 2>&1 && cp {output.samples:q}/rasters.png {output.rasters:q}"
