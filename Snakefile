# madbench pipeline: datasets x noise schedules x methods x seeds -> train, evaluate (samples, metrics) ->
# tables, figures and the static dashboard under results/.  See docs/pipeline.md.
#
#   snakemake --cores 2 --configfile config/quick.yaml         # the quick grid (CPU, < 10 min)
#   snakemake --workflow-profile workflow/profiles/gpu           # the paper grid on local GPUs
#   snakemake --report results/report.html                      # the Snakemake report
from snakemake.utils import min_version

min_version("8.20")


# The paper grid by default. A --configfile on the command line REPLACES it (rather than being
# merged into it key by key), so config/quick.yaml and config/test.yaml are complete on their own.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/runs.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/rate_separation.smk"
include: "workflow/rules/dashboard.smk"


wildcard_constraints:
    dataset=r"[A-Za-z0-9_.-]+",
    split=r"random|grouped|none",
    schedule=r"[A-Za-z0-9_.-]+",
    method=r"[A-Za-z0-9_.-]+",
    seed=r"\d+",


rule all:
    input:
        rules.aggregate.output,
        expand(
            f"{RESULTS}/figures/{{figure}}.{{ext}}",
            figure=["toy_fields"] + RUN_FIGURES,
            ext=["png", "pdf"],
        ),
        rules.rate_separation.output,
        f"{RESULTS}/dashboard/index.html",
        f"{RESULTS}/tables/run_check.txt",
    default_target: True
