"""A `fewshot run` whose --pretrain (or FixMatch) was dropped at its planning (summary.json's `pretrain_skipped`,
`fixmatch_skipped`): `make demo`'s table headed the column "--pretrain (MoCo)" over the scores of a run without
MoCo, and the report's overview said "labelled only" with no word why (review rev86). Files written by hand."""

from __future__ import annotations

import json

from test_demo_scripts import SCRIPTS, built_datasets, fake_bin, run_script
from test_fEU_compare_width import _pipeline, _stage_config

WHY = "MoCo's share would hold about 3.2 steps (13 s at 4000 ms a step) once the fine-tuning's least time is kept back"


def test_demo_table_marks_the_column_of_a_run_whose_pretrain_was_skipped_and_says_why(tmp_path):
    bin_dir = fake_bin(tmp_path)
    root, out = tmp_path / "demo_data", tmp_path / "runs"
    built_datasets(root)
    done, _ = run_script(SCRIPTS / "demo.sh", tmp_path, bin_dir, root, out, 3)
    assert done.returncode == 0, done.stderr
    for name in ("selftrain", "moco"):
        summary = json.loads((out / name / "summary.json").read_text())
        summary["metrics"]["pred_all_score"] = {"digits": {"acc1": 80.5 if name == "moco" else 81.5, "n": 8}}
        if name == "moco":
            summary["pretrain_skipped"] = {"why": WHY}
        (out / name / "summary.json").write_text(json.dumps(summary))
    done, _ = run_script(SCRIPTS / "demo.sh", tmp_path, bin_dir, root, out, 3)
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stdout.splitlines() if line.startswith("dataset"))
    assert "--pretrain (MoCo skipped)" in header and "--pretrain (MoCo)" not in header, done.stdout
    assert f"{out}/moco: --pretrain was skipped (planned, not an error): {WHY}" in done.stdout
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line.startswith("digits")}
    assert rows == {"digits": ["81.50", "80.50", "-"]}, done.stdout


def test_overview_names_the_skipped_stage_in_the_method_and_its_why_in_the_caption(tmp_path):
    from fewshot.report import tables as T
    from fewshot.report.runs import expand_runs

    pre = _pipeline(tmp_path / "r_pre", {"finetune_labelled": (41.25, _stage_config("pseudo")),
                                         "finetune": (42.25, _stage_config("pseudo"))})
    fix = _pipeline(tmp_path / "r_fix", {"finetune": (43.25, _stage_config("off"))})
    plain = _pipeline(tmp_path / "r_plain", {"finetune": (44.25, _stage_config("off"))})
    for folder, key in ((pre, "pretrain_skipped"), (fix, "fixmatch_skipped")):
        summary = json.loads((folder / "summary.json").read_text())
        (folder / "summary.json").write_text(json.dumps({**summary, key: {"why": f"{key} {WHY}"}}))
    overview = T.overview_table(expand_runs([str(r) for r in (pre, fix, plain)]), {})
    method = {row[0]: row[overview.columns.index("method")] for row in overview.rows}
    assert method == {"r_pre/finetune_labelled": "self-training r1 (--pretrain skipped)",
                      "r_pre/finetune": "self-training r2 (--pretrain skipped)",
                      "r_fix/finetune": "labelled only (--semi fixmatch skipped)",
                      "r_plain/finetune": "labelled only"}, method
    assert (f"--pretrain was skipped in the `fewshot run` of r_pre/finetune_labelled, r_pre/finetune (planned, "
            f"not an error): pretrain_skipped {WHY}.") in overview.caption, overview.caption
    assert (f"--semi fixmatch was skipped in the `fewshot run` of r_fix/finetune (planned, not an error): "
            f"fixmatch_skipped {WHY}.") in overview.caption
    assert overview.caption.count("was skipped") == 2
