rule render_train_config:
    """The run's fully resolved trainer config: preset < run overrides < workflow-fixed values. The script
    finds the tokenizer and data by the same path conventions (lmrepro.workflow) as these inputs.
    """
    input:
        preset=run_preset,
        tokenizer=run_tokenizer_file,
        data=run_train_data,
        validation=run_validation_data,
    output:
        config="results/runs/{run}/train.toml",
    log:
        "results/logs/render_train_config/{run}.log",
    conda:
        LMREPRO_ENV
    params:
        settings=render_settings,
    shell:
        "python workflow/scripts/render_train_config.py --run {wildcards.run} --settings {params.settings:q} "
        "--out {output.config:q} > {log:q} 2>&1"


rule token_weights:
    """training.token_weights = "inverse_frequency": 1 / frequency of each id in the run's training shards,
    capped (token_weights_cap), SEP's weight optionally set (token_weights_sep)."""
    input:
        config=rules.render_train_config.output.config,
        data=run_train_data,
        tokenizer=run_tokenizer_file,
    output:
        weights="results/runs/{run}/token_weights.pt",
    log:
        "results/logs/token_weights/{run}.log",
    conda:
        LMREPRO_ENV
    shell:
        'python workflow/scripts/token_weights.py --config {input.config:q} --tokenizer "$(dirname {input.tokenizer:q})" '
        "--out {output.weights:q} > {log:q} 2>&1"


rule init_checkpoint:
    """step-0 (model only), shared by every parallel layout: the seeded random initialisation, or the
    weights of the converted base or of the other run's checkpoint that runs.<run>.init names (init.json
    says what came from where).
    """
    input:
        config=rules.render_train_config.output.config,
        base=run_init_base,
    output:
        checkpoint=directory("results/runs/{run}/checkpoints/step-0"),
    log:
        "results/logs/init_checkpoint/{run}.log",
    benchmark:
        "results/benchmarks/init_checkpoint/{run}.tsv"
    conda:
        LMREPRO_ENV
    params:
        base=init_base_arg,
    shell:
        "python workflow/scripts/init_checkpoint.py --config {input.config:q} {params.base} "
        "--save-to {output.checkpoint:q} > {log:q} 2>&1"


rule train_segment:
    """One segment: resume from the previous segment's checkpoint, train to step N, save step-N.

    Rolling checkpoints and metrics live in the undeclared state/ folder, so a retried job resumes. The
    launcher (train_launcher) runs torchrun on one node, or on every node of a Slurm job (profiles/slurm).
    """
    input:
        config=rules.render_train_config.output.config,
        start=previous_checkpoint,
        weights=run_weights,
    output:
        checkpoint=directory("results/runs/{run}/checkpoints/step-{step}"),
    log:
        "results/logs/train_segment/{run}/step-{step}.log",
    benchmark:
        "results/benchmarks/train_segment/{run}/step-{step}.tsv"
    wildcard_constraints:
        step=r"[1-9]\d*",
    retries: segment_retries()
    conda:
        LMREPRO_ENV
    threads: train_threads
    resources:
        nodes=train_resource("nodes"),
        tasks=train_resource("tasks"),
        mpi=train_resource("mpi"),
        gres=train_resource("gres"),
        tasks_per_gpu=train_resource("tasks_per_gpu"),
        train_procs_per_node=train_resource("train_procs_per_node"),
        mem_mb=train_resource("mem_mb"),
        runtime=train_resource("runtime"),
        slurm_extra=train_resource("slurm_extra"),
    params:
        launcher=train_launcher,
    shell:
        "{params.launcher} workflow/scripts/train.py --config {input.config:q} --resume-from {input.start:q} "
        "--save-to {output.checkpoint:q} --until-step {wildcards.step} >> {log:q} 2>&1"
