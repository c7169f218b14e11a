"""Thin wrapper: write results/dashboard/index.html (madbench.dashboard)."""

from pathlib import Path

from madbench.dashboard import build_dashboard
from madbench.pipeline import rule_log


def main(smk) -> None:
    """Build the page from runs.csv, the tables directory and the figures directory."""
    with rule_log(smk.log[0]):
        results = Path(smk.params.results)
        build_dashboard(
            smk.input.runs, Path(smk.input.runs).parent, results / "figures", smk.output[0], results
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
