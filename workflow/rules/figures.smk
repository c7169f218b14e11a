# Figures: MAD's toy figure from the library, the others from the run table.

RUN_FIGURES = ["training_curves", "efficiency", "score_error", "samples_s2", "samples_so3", "schedules"]


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
