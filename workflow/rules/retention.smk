rule drop_optimizer_state:
    """A segment checkpoint becomes model-only once the segment keep_optimizer_last_k later is complete and
    every eval of its step is done (they read the model only; the swap must not happen under them). The
    folder keeps its modification time, so nothing downstream reruns. `ancient()`: a reader or a later
    checkpoint rewritten afterwards does not make this rerun.
    """
    input:
        checkpoint="results/runs/{run}/checkpoints/step-{step}",
        later=ancient(later_checkpoint),
        readers=ancient(checkpoint_readers),
    output:
        record="results/runs/{run}/retention/step-{step}.json",
    log:
        "results/logs/drop_optimizer_state/{run}/step-{step}.log",
    conda:
        LMREPRO_ENV
    shell:
        "python workflow/scripts/drop_optimizer_state.py --checkpoint {input.checkpoint:q} "
        "--out {output.record:q} > {log:q} 2>&1"
