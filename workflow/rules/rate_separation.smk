# The sigma-rate separation curves (docs/science.md section 5): exact-score anatomy, error tolerance
# and tempering, plus the learned DSM and MAD scores of the grid's runs where it has them.

rule rate_separation:
    input:
        [f"{run}/status/train.json" for run in rs_learned_runs().values()],
    output:
        curves=report(
            f"{RS}/curves.csv", caption="../report/rate_separation.rst", category="Rate separation"
        ),
        slopes=report(
            f"{RS}/slopes.csv", caption="../report/rate_separation.rst", category="Rate separation"
        ),
        figures=expand(f"{RESULTS}/figures/{{figure}}.{{ext}}", figure=RS_FIGURES, ext=["png", "pdf"]),
    params:
        cmd=rs_cmd,
    threads: 2
    log:
        f"{RESULTS}/logs/rate_separation.log",
    benchmark:
        f"{RESULTS}/benchmarks/rate_separation.tsv"
    conda:
        "../envs/madbench.yaml"
    shell:
        "OMP_NUM_THREADS={threads} {params.cmd} > {log:q} 2>&1"
