"""key=value words the command or its method never reads get one warning line naming them and why: `fewshot train
run.pseudo_rounds=5` (train reads no run.* field), `fewshot run --semi off run.pseudo_rounds=1` (only self-training
reads run.pseudo_*), `data.mix_p=0.3` with neither mixup nor CutMix on were accepted and did nothing, silently. Not
refused, and not said of a --config file's fields: a shared file may carry them. The commands stop before training
here (their entry points are patched): the warnings come from the command line alone."""

from __future__ import annotations

import pytest

from helpers.checks import run_main


@pytest.fixture
def no_training(monkeypatch):
    """What train, pretrain and run would start, recorded instead: the settings they were given."""
    from fewshot import pipeline
    from fewshot.ssl import pretrain
    from fewshot.train import finetune

    given = []
    monkeypatch.setattr(finetune, "run_finetune", lambda cfg, *a, **k: given.append(cfg))
    monkeypatch.setattr(pretrain, "run_pretrain", lambda cfg, *a, **k: given.append(cfg))
    monkeypatch.setattr(pipeline, "run_pipeline", lambda cfg, *a, **k: given.append(cfg))
    return given


def command(name, root, out, *words):
    return run_main(name, "--data", root, "--out", out, "--model", "test_resnet", "--img-size", "32", "--device",
                    "cpu", "--no-progress", *words)


def warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:") and "nothing" in line]


def test_train_names_the_run_words_it_never_reads(digits_root, tmp_path, no_training):
    rc, _, err = command("train", digits_root, tmp_path / "t", "run.semi_method=fixmatch", "run.pseudo_rounds=5",
                         "run.balance=on", "optim.lr=1e-3")
    assert rc == 0 and no_training, err  # accepted: a shared config may carry them
    assert warnings(err) == ["warning: run.semi_method=fixmatch run.pseudo_rounds=5 run.balance=on do nothing: "
                             "`fewshot train` reads no run.* field (they set `fewshot run`'s stages and budget); "
                             "drop them, or give them to `fewshot run`."], err


def test_pretrain_names_a_run_word_too(digits_root, tmp_path, no_training):
    rc, _, err = command("pretrain", digits_root, tmp_path / "p", "run.balance=on")
    assert rc == 0 and no_training, err
    assert len(warnings(err)) == 1 and "run.balance=on does nothing: `fewshot pretrain` reads no run.*" in err


@pytest.mark.parametrize("method", [["--semi", "off"], ["--semi", "fixmatch"], ["--baseline"]])
def test_run_names_self_training_words_another_method_never_reads(digits_root, tmp_path, no_training, method):
    rc, _, err = command("run", digits_root, tmp_path / "r", *method, "run.pseudo_rounds=3",
                         "run.pseudo_targets=soft", "--pretrain" if method[0] == "--semi" else "run.balance=on")
    assert rc == 0 and no_training, err
    semi = "off" if method[-1] in ("off", "--baseline") else "fixmatch"
    # --baseline refuses --semi pseudo: the way out is dropping it
    advice = "drop --baseline" if method == ["--baseline"] else "give --semi pseudo"
    assert warnings(err) == [f"warning: run.pseudo_rounds=3 run.pseudo_targets=soft do nothing: run.pseudo_* fields "
                             f"are read by self-training only (--semi pseudo) and this run's method is {semi}; drop "
                             f"them, or {advice}."], err


@pytest.mark.parametrize("method", [[], ["--no-pretrain"], ["--baseline"], ["run.pretrain=false"]])
def test_run_names_moco_stage_words_a_run_without_one_never_reads(digits_root, tmp_path, no_training, method):
    """run.pretrain_share=0.4 with --baseline (or without --pretrain, the default) was never read, silently."""
    rc, _, err = command("run", digits_root, tmp_path / "r", *method, "run.pretrain_share=0.4", "run.queue_size=256",
                         "run.moco_momentum=0.9", "run.finetune_lr=1e-3", "run.balance=on")
    assert rc == 0 and no_training, err
    none, advice = (("--baseline runs none", "give --pretrain instead of --baseline") if method == ["--baseline"]
                    else ("this run has none", "give --pretrain"))
    assert warnings(err) == [f"warning: run.pretrain_share=0.4 run.queue_size=256 run.moco_momentum=0.9 "
                             f"run.finetune_lr=1e-3 do nothing: run.pretrain_*, run.queue_size, run.moco_momentum and "
                             f"run.finetune_* are read only with a MoCo stage (--pretrain) and {none}; drop them, or "
                             f"{advice}."], err


@pytest.mark.parametrize("words", [["--pretrain"], ["run.pretrain=true"]])
def test_moco_stage_words_pass_quietly_with_one(digits_root, tmp_path, no_training, words):
    rc, _, err = command("run", digits_root, tmp_path / "r", *words, "run.pretrain_share=0.4", "run.queue_size=256",
                         "run.pretrain_batch_size=32", "run.finetune_lr=1e-3")
    assert rc == 0 and no_training and not warnings(err), err


@pytest.mark.parametrize("word", ["data.mix_p=0.3", "data.mixup_alpha=0.2", "data.cutmix_alpha=1.0"])
def test_pretrain_names_the_mixing_words(digits_root, tmp_path, no_training, word):
    """`fewshot pretrain` builds no supervised batches: data.mix_p and the mixing alphas were ignored silently."""
    rc, _, err = command("pretrain", digits_root, tmp_path / "p", word)
    assert rc == 0 and no_training, err
    assert warnings(err) == [f"warning: {word} does nothing: `fewshot pretrain` mixes no batches (mixup and CutMix "
                             f"are supervised training's); drop them, or give them to `fewshot train` or "
                             f"`fewshot run`."], err


@pytest.mark.parametrize("name", ["train", "run"])
def test_mix_p_without_mixup_or_cutmix_is_named(digits_root, tmp_path, no_training, name):
    rc, _, err = command(name, digits_root, tmp_path / "m", "data.mix_p=0.3")
    assert rc == 0, err
    assert warnings(err) == ["warning: data.mix_p=0.3 does nothing: data.mix_p is the share of batches mixed, and "
                             "neither mixup nor CutMix is on; give data.mixup_alpha or data.cutmix_alpha above 0 as "
                             "well, or drop it."], err


@pytest.mark.parametrize("words", [["--semi", "pseudo", "run.pseudo_rounds=3", "run.pseudo_targets=soft"],
                                   ["data.cutmix_alpha=1.0", "data.mix_p=0.3"],
                                   ["run.balance=off", "data.mixup_alpha=0.2", "data.mix_p=0.5"]])
def test_words_the_run_reads_pass_quietly(digits_root, tmp_path, no_training, words):
    rc, _, err = command("run", digits_root, tmp_path / "q", *words)
    assert rc == 0 and no_training and not warnings(err), err


def test_a_config_files_fields_are_not_named(digits_root, tmp_path, no_training):
    """A shared config file may carry fields one command reads and another does not: only typed words are named."""
    config = tmp_path / "shared.yaml"
    config.write_text("run:\n  pseudo_rounds: 3\n  balance: 'on'\ndata:\n  mix_p: 0.3\n")
    rc, _, err = command("train", digits_root, tmp_path / "c", "--config", config)
    assert rc == 0 and no_training and not warnings(err), err


def test_pretrain_names_the_fine_tuning_words_it_never_reads(digits_root, tmp_path, no_training):
    """`pretrain semi.method=fixmatch optim.label_smoothing=0.5 data.sampler=grouped optim.backbone_lr_mult=0.01`
    was written to config.yaml and never used (MoCo's param_groups ignores the backbone multiplier), silently."""
    words = ["semi.method=fixmatch", "optim.label_smoothing=0.5", "data.sampler=grouped",
             "optim.backbone_lr_mult=0.01", "train.ema=true", "train.eval_every=2"]
    rc, _, err = command("pretrain", digits_root, tmp_path / "p", *words, "moco.knn_k=5", "aug.blur_p=0.1",
                         "train.seed=3")
    assert rc == 0 and no_training, err
    assert warnings(err) == [f"warning: {' '.join(words)} do nothing: `fewshot pretrain` does not read them "
                             f"(fine-tuning's head, loss, backbone lr, EMA, evaluation, sampler, RandAugment and "
                             f"flips, and semi.*; MoCo's views are aug.*, its kNN monitor moco.knn_*); drop them, or "
                             f"give them to `fewshot train` or `fewshot run`."], err


@pytest.mark.parametrize("semi, named", [([], ["moco.temperature=0.1", "moco.queue_size=64", "moco.cos=false"]),
                                         (["semi.method=moco"], ["moco.cos=false"])])
def test_train_names_the_moco_words_it_never_reads(digits_root, tmp_path, no_training, semi, named):
    """`fewshot train moco.temperature=0.1` did nothing unless semi.method=moco, whose loss reads a few moco.*
    fields only (not moco.cos, MoCo pretraining's schedule)."""
    rc, _, err = command("train", digits_root, tmp_path / "t", *semi, "moco.temperature=0.1", "moco.queue_size=64",
                         "moco.cos=false")
    assert rc == 0 and no_training, err
    said = warnings(err)
    assert len(said) == 1 and said[0].startswith(f"warning: {' '.join(named)} do"), err
    assert ("only with semi.method=moco" if not semi else "semi.method=moco reads only moco.dim") in said[0]


@pytest.mark.parametrize("method", [["--no-pretrain"], ["--baseline"], []])
def test_run_names_moco_words_a_run_without_a_moco_stage_never_reads(digits_root, tmp_path, no_training, method):
    """`fewshot run --no-pretrain moco.temperature=0.1` (or --baseline) was accepted and did nothing, silently:
    only the MoCo stage reads moco.*, and the run's fine-tuning never uses semi.method=moco."""
    rc, _, err = command("run", digits_root, tmp_path / "r", *method, "moco.temperature=0.1", "moco.cos=false")
    assert rc == 0 and no_training, err
    none, advice = (("--baseline runs none", "give --pretrain instead of --baseline") if method == ["--baseline"]
                    else ("this run has none", "give --pretrain"))
    assert warnings(err) == [f"warning: moco.temperature=0.1 moco.cos=false do nothing: `fewshot run` reads moco.* "
                             f"only in its MoCo stage (--pretrain) and {none}; drop them, or {advice}."], err


def test_run_moco_words_a_run_replaces_get_their_own_warning_only(digits_root, tmp_path, no_training):
    rc, _, err = command("run", digits_root, tmp_path / "r", "--no-pretrain", "moco.queue_size=64")
    assert rc == 0 and not warnings(err) and "moco.queue_size=64 is replaced by run.queue_size" in err, err


def test_unused_override_warnings_of_run_moco_words():
    from fewshot.cli_warnings import unused_override_warnings
    from fewshot.config import resolve

    plain = resolve(default_preset="mocov2")
    staged = resolve(overrides=["run.pretrain=true"], default_preset="mocov2")
    assert unused_override_warnings("run", staged, ["moco.temperature=0.1", "optim.label_smoothing=0.1"]) == []
    assert unused_override_warnings("run", plain, ["optim.label_smoothing=0.1"]) == []
    said = unused_override_warnings("run", plain, ["moco.temperature=0.1"], baseline=True)
    assert len(said) == 1 and "--baseline runs none" in said[0]


def test_run_with_pretrain_names_no_fine_tuning_word(digits_root, tmp_path, no_training):
    """`fewshot run --pretrain optim.label_smoothing=0.1`: its fine-tuning reads it (pretrain's warning is not
    run's), and its MoCo stage reads moco.*."""
    rc, _, err = command("run", digits_root, tmp_path / "r", "--pretrain", "optim.label_smoothing=0.1",
                         "moco.temperature=0.1")
    assert rc == 0 and no_training and not warnings(err), err


@pytest.mark.parametrize("name, shown, unread", [("pretrain", "moco.knn_every=5", "train.eval_every=1"),
                                                 ("run", "optim.label_smoothing=0.1", "train.eval_every=1"),
                                                 ("train", "train.eval_every=1", None)])
def test_the_help_example_is_a_word_the_command_reads(name, shown, unread, capsys):
    """`fewshot pretrain --help` gave train.eval_every=1 as its example: a word pretrain warns it does not read."""
    from fewshot.cli import main

    with pytest.raises(SystemExit):
        main([name, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"e.g. optim.lr=3e-4 {shown}." in out, out
    if unread:
        assert unread not in out, out
