# One run = train -> evaluate (which samples and writes samples.npz) in RESULTS/runs/dataset~D/split~P/schedule~S/method~M/seed~N/.
# Each stage writes status/<stage>.json whatever happens (workflow/scripts/run_stage.py): a failed
# stage does not fail the job; later stages skip and the tables mark the run failed. A failed
# stage is retried on the next invocation (its `attempt` param grows) up to config max_attempts.
# Training passes --device itself: cuda when the job holds resources gpu > 0, else cpu; the
# default is one GPU per job when this machine has one (GPU_PER_JOB), none otherwise.
# With config key train.stack > 1 (default on a GPU: 64) the trainable runs train as stacks
# (rule train_stack: one job, one model, up to train.stack runs; see madbench.stack) and rule
# train_member writes each member's status/train.json from its run_info.json; rule train then
# trains only the methods without weights (the oracle).


rule train:
    wildcard_constraints:
        # not the stacked methods (their status comes from rule train_member)
        method=rf"(?!(?:{STACKED_METHODS})/)[A-Za-z0-9_.-]+" if STACKS else r"[A-Za-z0-9_.-]+",
    output:
        status=f"{RUN}/status/train.json",
    log:
        f"{RESULTS}/logs/train/{RUN_PATTERN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{RUN_PATTERN}.tsv"
    params:
        cmd=train_cmd,
        meta=run_meta,
        run_dir=run_dir,
        stage_script=STAGE_SCRIPT,
        attempt=next_attempt("train"),
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../envs/madbench.yaml"
    shell:
        "python3 {params.stage_script:q} --stage train --status {output.status:q} --log {log:q}"
        " --gpus {resources.gpu} --threads {threads} --attempt {params.attempt}"
        " --run-dir {params.run_dir:q} --meta {params.meta} -- {params.cmd}"


if STACKS:

    rule train_stack:
        wildcard_constraints:
            stack=r"dim~\d+/split~[^/]+/stack~\d+",
        output:
            status=f"{RESULTS}/stacks/{{stack}}/status.json",
        log:
            f"{RESULTS}/logs/train_stack/{{stack}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/train_stack/{{stack}}.tsv"
        params:
            cmd=stack_cmd,
            stack_dir=lambda wildcards: f"{RESULTS}/stacks/{wildcards.stack}",
            stage_script=STAGE_SCRIPT,
            attempt=stack_attempt,
        threads: 1
        resources:
            gpu=GPU_PER_JOB,
        conda:
            "../envs/madbench.yaml"
        shell:
            "python3 {params.stage_script:q} --stage train --status {output.status:q} --log {log:q}"
            " --gpus {resources.gpu} --threads {threads} --attempt {params.attempt}"
            " --run-dir {params.stack_dir:q} --meta stack={wildcards.stack} -- {params.cmd}"

    rule train_member:
        wildcard_constraints:
            method=STACKED_METHODS,
        input:
            lambda wildcards: f"{RESULTS}/stacks/{STACK_OF[run_dir(wildcards)]}/status.json",
        output:
            status=f"{RUN}/status/train.json",
        log:
            f"{RESULTS}/logs/train/{RUN_PATTERN}.log",
        params:
            meta=run_meta,
            run_dir=run_dir,
            member_script=MEMBER_SCRIPT,
            attempt=next_attempt("train"),
        localrule: True
        shell:
            "python3 {params.member_script:q} --stack-status {input:q} --status {output.status:q}"
            " --log {log:q} --attempt {params.attempt} --run-dir {params.run_dir:q}"
            " --meta {params.meta}"


rule evaluate:
    input:
        f"{RUN}/status/train.json",
    output:
        status=f"{RUN}/status/evaluate.json",
    log:
        f"{RESULTS}/logs/evaluate/{RUN_PATTERN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{RUN_PATTERN}.tsv"
    params:
        cmd=evaluate_cmd,
        meta=run_meta,
        run_dir=run_dir,
        stage_script=STAGE_SCRIPT,
        attempt=next_attempt("evaluate"),
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../envs/madbench.yaml"
    shell:
        "python3 {params.stage_script:q} --stage evaluate --status {output.status:q} --log {log:q}"
        " --upstream {input:q} --gpus {resources.gpu} --threads {threads} --attempt {params.attempt}"
        " --run-dir {params.run_dir:q} --meta {params.meta} -- {params.cmd}"


rule evaluate_snapshot:
    input:
        f"{RUN}/status/train.json",
    output:
        status=f"{RUN}/status/evaluate_snapshot.json",
    log:
        f"{RESULTS}/logs/evaluate_snapshot/{RUN_PATTERN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_snapshot/{RUN_PATTERN}.tsv"
    params:
        cmd=lambda wildcards: evaluate_cmd(wildcards, snapshot=True),
        meta=run_meta,
        run_dir=run_dir,
        stage_script=STAGE_SCRIPT,
        attempt=next_attempt("evaluate_snapshot"),
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../envs/madbench.yaml"
    shell:
        "python3 {params.stage_script:q} --stage evaluate_snapshot --status {output.status:q}"
        " --log {log:q} --upstream {input:q} --gpus {resources.gpu} --threads {threads}"
        " --attempt {params.attempt} --run-dir {params.run_dir:q} --meta {params.meta}"
        " -- {params.cmd}"
