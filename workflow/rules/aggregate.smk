# Tables from every run's final status (whatever it is), and the failure check.

TABLE_STEMS = FAMILIES + ["cost", "earth_nll", "so3_ll", "convergence"]


rule aggregate:
    input:
        statuses=all_run_files("status/evaluate.json"),
        snapshots=all_run_files("status/evaluate_snapshot.json", trainable_only=True)
        if CONVERGENCE
        else [],
    output:
        runs=report(
            f"{RESULTS}/tables/runs.csv",
            caption="../report/runs.rst",
            category="Tables",
        ),
        summary=f"{RESULTS}/tables/summary.csv",
        excluded=f"{RESULTS}/tables/excluded.csv",
        csv=report(
            expand(f"{RESULTS}/tables/{{stem}}.csv", stem=TABLE_STEMS),
            caption="../report/tables.rst",
            category="Tables",
        ),
        md=expand(f"{RESULTS}/tables/{{stem}}.md", stem=TABLE_STEMS),
        tex=expand(f"{RESULTS}/tables/{{stem}}.tex", stem=TABLE_STEMS),
    params:
        families=FAMILIES,
        excluded=EXCLUDED.to_dict("records"),
        bench_root=f"{RESULTS}/benchmarks",
    log:
        f"{RESULTS}/logs/aggregate.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate.tsv"
    conda:
        "../envs/madbench.yaml"
    script:
        "../scripts/aggregate.py"


rule check_runs:
    input:
        runs=f"{RESULTS}/tables/runs.csv",
        dashboard=f"{RESULTS}/dashboard/index.html",
    output:
        f"{RESULTS}/tables/run_check.txt",
    params:
        fail=config.get("fail_on_run_error", True),
    log:
        f"{RESULTS}/logs/check_runs.log",
    conda:
        "../envs/madbench.yaml"
    script:
        "../scripts/check_runs.py"
