rule report:
    """Plots (PNG + SVG), summary.csv and summary.html over every run's metrics and evaluations."""
    input:
        evals=all_eval_outputs,
        baselines=all_baseline_outputs,
        checkpoints=all_segment_checkpoints,
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
    log:
        "results/logs/report.log",
    conda:
        LMREPRO_ENV
    shell:
        "python workflow/scripts/report.py --evals {input.evals} --baselines {input.baselines} "
        "--checkpoints {input.checkpoints} "
        "--out $(dirname {output.summary}) > {log} 2>&1"
