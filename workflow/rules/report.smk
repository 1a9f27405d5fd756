rule report:
    """Plots (PNG + SVG) and summary.csv over every run's metrics and evaluations."""
    input:
        evals=all_eval_outputs,
        baselines=all_baseline_outputs,
        checkpoints=all_segment_checkpoints,
        retention=all_retention_outputs,  # no checkpoint is swapped while the report reads its metrics
    output:
        summary=report(
            "results/report/summary.csv",
            caption="../report/summary.rst",
            category="Summary",
        ),
        loss=report(
            "results/report/loss.png",
            caption="../report/loss.rst",
            category="Training",
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
        eval_accuracy=report(
            "results/report/eval_accuracy.png",
            caption="../report/eval_accuracy.rst",
            category="Evaluation",
        ),
    log:
        "results/logs/report.log",
    conda:
        LMREPRO_ENV
    shell:
        "python workflow/scripts/report.py --evals {input.evals:q} --baselines {input.baselines:q} "
        "--checkpoints {input.checkpoints:q} "
        '--out "$(dirname {output.summary:q})" > {log:q} 2>&1'
