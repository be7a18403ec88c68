"""`fewshot compare RUN [RUN ...]`: the report's tables printed in the terminal, and the FLOPs per run that both
the tables and the report's page show (kept here, beside the tables that need them)."""

from __future__ import annotations

from fewshot.errors import printable
from fewshot.report import tables as T
from fewshot.report.fit import cell_len, output_width, wrap_words
from fewshot.report.pipeline_runs import pipeline_of, resume_command
from fewshot.report.run_record import Run
from fewshot.report.runs import expand_runs


def compute_flops(runs: list[Run], models: dict | None = None) -> dict[str, int | None]:
    """FLOPs per run label; runs whose metrics lack a parameter count (MoCo) get it from the model."""
    from fewshot.report.flops import run_model_stats

    out = {}
    for r in runs:
        a = (models or {}).get(r.label)
        n_flops, n_params, size = run_model_stats(r, a.model if a is not None else None,
                                                  a.size if a is not None else None)
        out[r.label] = n_flops
        r.model_n_parameters, r.model_img_size = n_params, size
    return out


def compare_tables(runs: list[Run], flop_counts: dict) -> list[T.Table]:
    tables = [T.overview_table(runs, flop_counts)]
    for r in runs:
        tables += T.run_tables(r)
    return tables


def run_compare(paths: list[str], file=None) -> list[T.Table]:
    """`fewshot compare`: the report's tables, printed in the terminal."""
    import sys

    runs = expand_runs(paths)
    tables = compare_tables(runs, compute_flops(runs))
    T.print_tables(tables, file=file)
    width = output_width(file or sys.stdout)
    for r in runs:
        if r.being_written:  # its figures change with every epoch: not a finished run's
            epochs = [x["epoch"] for x in r.log if isinstance(x.get("epoch"), int)]
            r.notes.append(f"the run is still being written (training): its figures are of the epochs logged so far"
                           f"{f' (up to epoch {max(epochs)})' if epochs else ''}, not its final ones.")
        elif not (r.metrics or r.metrics_known or r.metrics_unknown or r.evaluated):  # a row of "-" said nothing
            # a stage is continued by its `fewshot run`, not by the `fewshot train` "the same command" suggested
            folder = pipeline_of(r.path, r.group)  # a stage given alone too
            how = (f"{resume_command(folder)} continues it" if folder is not None else
                   "the same command with --resume continues it")
            r.notes.append(f"the run stopped before its first evaluation (no metrics.json, no evaluation in "
                           f"log.jsonl): it has no accuracies yet; {how}.")
        for n in r.notes:  # wrapped to the terminal as the captions are
            print("\n".join(wrap_words(printable(f"note ({r.label}): {n}"), width, cell_len)), file=file)
    return tables
