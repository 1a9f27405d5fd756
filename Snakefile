# lmrepro: LLM pretraining reproduced end to end. `snakemake --cores all all` runs the embedded default;
# `snakemake --profile profiles/slurm all` runs on a cluster; `--configfile config/experiments/<name>.yaml`
# runs that experiment instead of the default. See README.md and config/README.md.
import os
import sys

from snakemake.utils import min_version, validate

# Jobs and this Snakefile use the lmrepro package of this checkout, whatever is installed elsewhere.
_SRC = os.path.join(workflow.basedir, "src")
sys.path.insert(0, _SRC)
shell.prefix(f'export PYTHONPATH="{_SRC}:$PYTHONPATH"; ')

min_version("9.0")


# The embedded default, unless --configfile names an experiment (config/experiments/): that file alone is
# the config then, so only its runs are planned, run and reported (`--config key=value` still merges).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


validate(config, "workflow/schemas/config.schema.yaml", set_default=True)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/convert.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/retention.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        report_files(),
        all_sample_outputs(),
