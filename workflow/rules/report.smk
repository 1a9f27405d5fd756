rule sample_text:
    """Text samples of a causal run (runs.<run>.text_samples): its prompts continued greedily and by seeded
    sampling with the hf/ export of every evaluated step."""
    input:
        exports=text_sample_exports,
    output:
        samples="results/runs/{run}/text_samples.json",
    log:
        "results/logs/sample_text/{run}.log",
    conda:
        LMREPRO_ENV
    params:
        settings=text_samples_settings,
    shell:
        "python workflow/scripts/sample_text.py --exports {input.exports:q} --settings {params.settings} "
        "--out {output.samples:q} > {log:q} 2>&1"


rule report:
    """Plots (PNG + SVG), summary.csv, summary.html and text_samples.html over every run's metrics,
    evaluations and text samples."""
    input:
        evals=all_eval_outputs,
        baselines=all_baseline_outputs,
        checkpoints=all_segment_checkpoints,
        retention=all_retention_outputs,  # no checkpoint is swapped while the report reads its metrics
        text_samples=all_text_sample_outputs,
    output:
        summary="results/report/summary.csv",
        summary_table=report(
            "results/report/summary.html",
            caption="../report/summary.rst",
            category="Summary",
        ),
        loss=report(
            "results/report/loss.png",
            caption="../report/loss.rst",
            category="Training",
        ),
        perplexity=report(
            "results/report/perplexity.png",
            caption="../report/perplexity.rst",
            category="Evaluation",
        ),
        learning_rate=report(
            "results/report/learning_rate.png",
            caption="../report/learning_rate.rst",
            category="Training",
        ),
        throughput=report(
            "results/report/throughput.png",
            caption="../report/throughput.rst",
            category="Training",
        ),
        memory=report(
            "results/report/memory.png",
            caption="../report/memory.rst",
            category="Training",
        ),
        eval_accuracy=report(
            "results/report/eval_accuracy.png",
            caption="../report/eval_accuracy.rst",
            category="Evaluation",
        ),
        mixture=report(
            "results/report/mixture.png",
            caption="../report/mixture.rst",
            category="Training",
        ),
        text_samples=report(
            "results/report/text_samples.html",
            caption="../report/text_samples.rst",
            category="Samples",
        ),
    log:
        "results/logs/report.log",
    conda:
        LMREPRO_ENV
    shell:
        "python workflow/scripts/report.py --evals {input.evals:q} --baselines {input.baselines:q} "
        "--checkpoints {input.checkpoints:q} --text-samples {input.text_samples:q} "
        '--out "$(dirname {output.summary:q})" > {log:q} 2>&1'
