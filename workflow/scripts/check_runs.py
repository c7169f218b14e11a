"""List the failed runs of runs.csv; fail (after tables and dashboard exist) if asked to."""

import sys

import pandas as pd


def last_line(text) -> str:
    """The last non-empty line of a log excerpt ('' for none)."""
    lines = [ln for ln in str(text if isinstance(text, str) else "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def main(smk) -> None:
    """Write the check file, or exit 1 naming the failed runs when params.fail is set."""
    runs = pd.read_csv(smk.input.runs)
    failed = runs[runs["status"] != "ok"]
    lines = [
        f"{r.run_dir}: failed at stage {r.failed_stage}: {last_line(r.error)}"
        for r in failed.itertuples()
    ]
    text = f"{len(runs)} runs, {len(failed)} failed\n" + "\n".join(lines) + "\n"
    with open(smk.log[0], "w") as log:
        log.write(text)
    if len(failed) and smk.params.fail:
        sys.exit(
            f"{len(failed)} of {len(runs)} runs failed (marked in the tables and dashboard):\n"
            + "\n".join(lines)
        )
    with open(smk.output[0], "w") as out:
        out.write(text)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
