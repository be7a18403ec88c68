"""The line that says why self-training's later rounds were skipped names the time it compared: it said "about 47 s
were left ... the later round needs about 41 s" of a skip that was right, since round 1's own least run counts too."""

from __future__ import annotations

from types import SimpleNamespace

from helpers.run_patch import patch_pipeline


def test_the_skip_names_the_sum_it_compared_and_its_parts(monkeypatch, capsys, real_time_holds):
    from fewshot import pipeline

    clock = [1000.0]
    patch_pipeline(monkeypatch, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    patch_pipeline(monkeypatch, "measure_prediction_seconds", lambda *a, **k: 0.001)
    patch_pipeline(monkeypatch, "after_round1_seconds", lambda *a: 41.0)  # the hunt's numbers
    skip = {"rounds": 2, "skipped_from": None}
    run = SimpleNamespace(skip=skip, rounds=2, n_unlabeled=2000, test_set=SimpleNamespace(images=None),
                          r={"pseudo_share": 0.5}, last_end=clock[0] + 47.0, labelled_end=clock[0] + 20.0,
                          closing=lambda *a, **k: 5.0, decide=lambda rounds, frm, why: skip.update(why=why),
                          refuse_unless_least_run_fits=lambda *a: None, plan_closing=lambda s: None,
                          state=SimpleNamespace(status=lambda name: None, save=lambda: None))
    task = SimpleNamespace(step_s=1.0, eval_s=2.0, cfg={"train": {"ema": True}}, supports_ema=True)
    pipeline.PipelineRun.round1_closing(run, task, 2.0, 1.0)
    why = skip["why"]
    # 41 s for the later round (its labelling's timing batches among them), 1 s for round 1's end (the step past its
    # deadline; no test images to time), 15 % of them a margin, 6 steps of 1 s + one 2-s evaluation: 56 s, more than
    # the 47 s left
    assert "about 47 s were left" in why and "speed (about 56 s)" in why, why
    assert "(8.0 s: 6 steps and an evaluation)" in why and "later round (42 s:" in why, why
    assert "margin for round 1 ending late (6.3 s)" in why, why
    out = capsys.readouterr().out
    assert why in out, out
