# lmrepro: LLM pretraining reproduced end to end. `snakemake --cores all all` runs the embedded default;
# `snakemake --profile profiles/slurm all` runs on a cluster; `--configfile config/experiments/<name>.yaml`
# runs that experiment instead of the default. See README.md and config/README.md.
import os
import shlex
import sys

from snakemake.utils import min_version, validate

# Jobs and this Snakefile use the lmrepro package of this checkout, whatever is installed elsewhere.
_SRC = os.path.join(workflow.basedir, "src")
sys.path.insert(0, _SRC)
shell.prefix(f'export PYTHONPATH={shlex.quote(_SRC)}:"$PYTHONPATH"; ')

min_version("9.0")


from lmrepro.user_input import (
    check_command_line,
    check_schema,
    command_line_targets,
    load_config_file,
    stop_on_user_error,
)

SCHEMA = "workflow/schemas/config.schema.yaml"

# The embedded default, unless --configfile names an experiment (config/experiments/): that file alone is
# the config then, so only its runs are planned, run and reported (`--config key=value` still merges).
# Each config file is read strictly first (syntax errors with line and column, duplicate keys refused);
# a user error stops here in one line, before any job (lmrepro.user_input).
with stop_on_user_error():
    for config_file in workflow.overwrite_configfiles or ["config/config.yaml"]:
        load_config_file(config_file)

if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


with stop_on_user_error():
    check_schema(config, os.path.join(workflow.basedir, SCHEMA))
    check_command_line(
        workflow.resource_settings.cores, command_line_targets(), config["runs"]
    )
validate(config, SCHEMA, set_default=True)


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
