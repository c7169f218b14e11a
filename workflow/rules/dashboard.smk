# The static dashboard (results/dashboard/index.html).


rule dashboard:
    input:
        runs=f"{RESULTS}/tables/runs.csv",
        tables=rules.aggregate.output.csv,
        figures=expand(f"{RESULTS}/figures/{{figure}}.png", figure=["toy_fields"] + RUN_FIGURES),
        rate_separation=rules.rate_separation.output.slopes,
    output:
        report(
            f"{RESULTS}/dashboard/index.html",
            caption="../report/dashboard.rst",
            category="Dashboard",
        ),
    params:
        results=lambda wildcards, output: str(Path(output[0]).parent.parent),
    log:
        f"{RESULTS}/logs/dashboard.log",
    benchmark:
        f"{RESULTS}/benchmarks/dashboard.tsv"
    conda:
        "../envs/madbench.yaml"
    script:
        "../scripts/dashboard.py"
