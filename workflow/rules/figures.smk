# Figures: MAD's toy figure from the library, the others from the run table.

# RUN_FIGURES (the figures drawn from the run table) comes from madbench.figures (common.smk).


rule figure_toy:
    output:
        png=report(
            f"{RESULTS}/figures/toy_fields.png",
            caption="../report/toy_fields.rst",
            category="Figures",
        ),
        pdf=f"{RESULTS}/figures/toy_fields.pdf",
    log:
        f"{RESULTS}/logs/figures/toy_fields.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures/toy_fields.tsv"
    conda:
        "../envs/madbench.yaml"
    script:
        "../scripts/figure.py"


rule figure_runs:
    input:
        runs=f"{RESULTS}/tables/runs.csv",
    output:
        png=report(
            f"{RESULTS}/figures/{{figure}}.png",
            caption="../report/figures.rst",
            category="Figures",
        ),
        pdf=f"{RESULTS}/figures/{{figure}}.pdf",
    params:
        metric=config.get("figures", {}).get("headline_metric"),
    wildcard_constraints:
        figure="|".join(RUN_FIGURES),
    log:
        f"{RESULTS}/logs/figures/{{figure}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures/{{figure}}.tsv"
    conda:
        "../envs/madbench.yaml"
    script:
        "../scripts/figure.py"
