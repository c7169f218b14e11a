"""Thin wrapper: draw one figure (madbench.figures) named by the rule's output."""

from pathlib import Path

from madbench import figures
from madbench.pipeline import rule_log


def main(smk) -> None:
    """toy_fields from the library; every other figure from runs.csv."""
    with rule_log(smk.log[0]):
        name = Path(smk.output.png).stem
        if name == "toy_fields":
            figures.toy_fields(smk.output.png, smk.output.pdf)
        else:
            figures.make_figure(
                name, smk.input.runs, smk.output.png, smk.output.pdf, smk.params.metric
            )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
