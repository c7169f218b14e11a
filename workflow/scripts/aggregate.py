"""Thin wrapper: the tables of results/tables from every run's status (madbench.aggregate)."""

from pathlib import Path

import pandas as pd

from madbench.aggregate import write_tables
from madbench.pipeline import rule_log


def main(smk) -> None:
    """Write the tables named in the aggregate rule's outputs; log to the rule's log."""
    with rule_log(smk.log[0]):
        cols = ["dataset", "schedule", "method", "reason"]
        excluded = pd.DataFrame(smk.params.excluded, columns=cols)
        out_dir = Path(smk.output.runs).parent
        runs = write_tables(
            smk.input.statuses, out_dir, smk.params.families, smk.params.bench_root, excluded
        )
        print(f"{len(runs)} runs, {int((runs['status'] != 'ok').sum())} failed")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
