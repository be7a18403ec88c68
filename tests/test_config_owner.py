"""One answer to "is this config.yaml a run's?" (config.written_by_run) for --config, `pretrain --config`'s warning
and an --out folder's config.yaml, and `fewshot run --config RUN/config.yaml` naming what it chose again, as
`fewshot train --config` does."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

import fewshot.pipeline as pipeline
import fewshot.run_stages as run_stages
from fewshot.cli import main
from fewshot.config import CHOSEN, RECHOSEN, RUN_SECTIONS, resolve, save_yaml, written_by_run
from fewshot.errors import UserError
from fewshot.run_lock import LOCK_NAME, release_all
from fewshot.train.run_dir import prepare_run_dir

REPO = Path(__file__).resolve().parents[1]


def train_run_config(folder: Path, drop: tuple = (), chosen: bool = True) -> Path:
    """A scratch `fewshot train` run's config.yaml (lr 0.004 x 1.0 chosen at run time) in a run folder; without
    the ``drop`` sections, and with no CHOSEN record where ``chosen`` is false (an older fewshot's)."""
    cfg = resolve(overrides=["optim.lr=0.004", "optim.backbone_lr_mult=1.0", "train.device=cpu"])
    if chosen:
        cfg[CHOSEN] = {"optim.lr": 0.004, "optim.backbone_lr_mult": 1.0, "train.device": "cpu"}
    for section in drop:
        cfg.pop(section)
    folder.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, folder / "config.yaml")
    (folder / "log.jsonl").write_text("")
    return folder / "config.yaml"


def test_one_answer_for_a_recipe_a_run_start_and_a_copy(tmp_path):
    recipe = yaml.safe_load((REPO / "configs" / "course_resnet50.yaml").read_text())
    assert not written_by_run(recipe, tmp_path / "x.yaml", run_files=False)  # five sections: a recipe
    whole = resolve()
    assert set(RUN_SECTIONS) <= set(whole)
    save_yaml(whole, tmp_path / "x.yaml")
    assert written_by_run(whole, tmp_path / "x.yaml", run_files=False)  # a run start's, or a copy: whole
    assert not written_by_run(whole, tmp_path / "x.yaml")  # a copy outside a run folder: the user's, pinned
    assert written_by_run(yaml.safe_load(train_run_config(tmp_path / "run").read_text()), tmp_path / "run" /
                          "config.yaml")
    assert written_by_run({"_task": "moco"}, tmp_path / "x.yaml")


def test_a_recipe_copied_into_the_out_folder_is_refused_not_written_over(tmp_path):
    """prepare_run_dir took any file with model, data, optim and train sections for a run's start: a recipe the
    user copied there (configs/course_resnet50.yaml) was replaced by the run's config.yaml."""
    out = tmp_path / "exp"
    out.mkdir()
    shutil.copy(REPO / "configs" / "course_resnet50.yaml", out / "config.yaml")
    before = (out / "config.yaml").read_text()
    cfg = {"data": {"root": str(tmp_path / "data")}}
    try:
        with pytest.raises(UserError) as refused:
            prepare_run_dir(out, False, cfg)
        assert (out / "config.yaml").read_text() == before
        said = str(refused.value)  # not "empty the folder": that deletes the recipe the user is running
        assert "its config.yaml is not one a run wrote (a recipe?)" in said and "empty the folder" not in said, said
        assert "Keep yours elsewhere and give --config from there, or choose another --out" in said, said
        (out / "notes.txt").write_text("mine")  # more than the recipe: the folder is someone else's
        with pytest.raises(UserError, match=r"is not empty \(config\.yaml, notes\.txt\)"):
            prepare_run_dir(out, False, cfg)
        started = tmp_path / "started"  # a start stopped before its log: config.yaml alone, written over
        started.mkdir()
        save_yaml(resolve(), started / "config.yaml")
        assert prepare_run_dir(started, False, cfg) is cfg
        assert (started / LOCK_NAME).is_file()  # taken for this run's start: locked for it to write
    finally:
        release_all()


def test_pretrain_warns_about_an_older_train_runs_config(tmp_path, capsys):
    """A train run of a fewshot before the semi: section saved none, and its config.yaml (AdamW) was taken for
    the user's MoCo recipe: `pretrain --config` trained MoCo with AdamW without a word."""
    from fewshot.cli_warnings import warn_finetune_config

    old = train_run_config(tmp_path / "old", drop=("semi", "run"), chosen=False)  # its lr chosen by the rules
    warn_finetune_config(old)
    err = capsys.readouterr().err
    assert "looks like a fine-tuning recipe" in err and "pretrain chooses it again" in err, err
    (tmp_path / "own.yaml").write_text("moco:\n  queue_size: 1024\noptim:\n  name: adamw\n")  # still quiet
    warn_finetune_config(tmp_path / "own.yaml")
    assert capsys.readouterr().err == ""


@pytest.fixture
def phases_only(monkeypatch) -> list:
    """`fewshot run` reduced to its phases up to the model's choice, where the note is given; the PipelineRun of
    each call."""
    phases = []

    def start(cfg, out, budget_minutes, started=None, resume=False):
        run = pipeline.PipelineRun(cfg, out, budget_minutes, started, resume)
        try:
            run.start_up()
            run.check_test_split()
            run.choose_model()
        finally:
            release_all()
        phases.append(run)

    monkeypatch.setattr(pipeline, "run_pipeline", start)
    return phases


def run_argv(root: Path, out: Path, config: Path, *extra: str) -> list[str]:
    return ["run", "--data", str(root), "--out", str(out), "--config", str(config), "--model", "test_resnet",
            "--img-size", "32", "--no-progress", *extra]


def test_run_says_once_what_it_chose_again_from_a_runs_config(digits_root, tmp_path, phases_only, capsys):
    """`fewshot run --config RUN/config.yaml` fine-tuned at run.finetune_lr 0.002 where the file held the scratch
    run's 0.004, without the note `fewshot train --config` gives; the record stays out of the run's settings."""
    config = train_run_config(tmp_path / "scratch")
    assert main(run_argv(digits_root, tmp_path / "r2", config, "--pretrain")) == 0
    err = capsys.readouterr().err
    assert err.count("note: ") == 1 and f"note: {config} records" in err, err
    assert "optim.lr 0.002 (0.004 there)" in err and "give e.g. optim.lr=0.004" in err, err
    assert RECHOSEN not in phases_only[0].cfg and RECHOSEN not in phases_only[0].requested
    assert main(run_argv(digits_root, tmp_path / "r3", config, "--pretrain", "optim.lr=0.004")) == 0  # given
    assert "note: " not in capsys.readouterr().err


def test_run_gives_no_advice_to_fine_tune_at_a_moco_runs_lr(digits_root, tmp_path, phases_only, capsys):
    """`fewshot run --config MOCO_RUN/config.yaml` warned that a MoCo lr collapsed AdamW fine-tuning, then advised
    "give e.g. optim.lr=0.015 to keep the file's value"."""
    cfg = resolve(overrides=["optim.name=sgd", "optim.lr=0.015", "optim.backbone_lr_mult=1.0", "train.device=cpu"])
    cfg.update({"_task": "moco", CHOSEN: {"optim.lr": 0.015, "optim.backbone_lr_mult": 1.0, "train.device": "cpu"}})
    (tmp_path / "moco").mkdir()
    save_yaml(cfg, tmp_path / "moco" / "config.yaml")
    (tmp_path / "moco" / "log.jsonl").write_text("")
    config = tmp_path / "moco" / "config.yaml"
    assert main(run_argv(digits_root, tmp_path / "r", config, "--device", "cpu")) == 0
    err = capsys.readouterr().err
    assert "looks like a `fewshot pretrain` recipe" in err, err
    assert "optim.lr 0.004 (0.015 there: MoCo pretraining's, not meant for fine-tuning)" in err, err
    assert "optim.lr=0.015" not in err and "keep the file's value" not in err, err


def test_pretrain_gives_no_advice_to_train_moco_at_a_fine_tuning_runs_lr(digits_root, tmp_path, monkeypatch,
                                                                         capsys):
    """The reverse: `fewshot pretrain --config TRAIN_RUN/config.yaml` advised keeping the AdamW run's lr 0.004."""
    import fewshot.ssl.pretrain

    def started(*args, **kwargs):
        raise UserError("stopped once started")

    monkeypatch.setattr(fewshot.ssl.pretrain, "MoCoTask", started)  # built once start_job has given the note
    config = train_run_config(tmp_path / "scratch")
    argv = ["pretrain", "--data", str(digits_root), "--out", str(tmp_path / "moco"), "--config", str(config),
            "--model", "test_resnet", "--img-size", "32", "--batch-size", "16", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "stopped once started" in err, err
    assert "looks like a fine-tuning recipe" in err, err
    assert "optim.lr 0.001875 (0.004 there: fine-tuning's, not meant for MoCo pretraining)" in err, err
    assert "optim.lr=0.004" not in err and "keep the file's value" not in err, err


def test_run_resume_and_a_users_recipe_give_no_note(digits_root, tmp_path, phases_only, monkeypatch, capsys):
    """A resumed run's stages go on with their own config.yaml, and a user's recipe records no choice: neither
    chooses anything again, so neither is told so."""
    recipe = REPO / "configs" / "course_resnet50.yaml"
    assert main(run_argv(digits_root, tmp_path / "r", recipe)) == 0
    assert RECHOSEN not in phases_only[0].cfg
    assert f"note: {recipe}" not in capsys.readouterr().err
    seen = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda cfg, *args, **kwargs: seen.append(cfg))
    config = train_run_config(tmp_path / "scratch")
    assert main(run_argv(digits_root, tmp_path / "r2", config, "--resume")) == 0
    assert seen and RECHOSEN not in seen[0]
    assert main(run_argv(digits_root, tmp_path / "r3", config)) == 0  # without --resume: marked for the note
    assert RECHOSEN in seen[1]


@pytest.fixture(scope="module")
def staged_run(digits_root, tmp_path_factory) -> tuple[Path, Path, str]:
    """A whole tiny `fewshot run --pretrain --config TRAIN_RUN/config.yaml` on the auto device: (its config, its
    folder, its stderr)."""
    from helpers.checks import run_main

    base = tmp_path_factory.mktemp("staged")
    config = train_run_config(base / "scratch")
    out = base / "run"
    rc, _, err = run_main(*run_argv(digits_root, out, config, "--pretrain", "--budget-minutes", "0.03",
                                    "run.report=false", "run.pretrain_batch_size=16", "train.batch_size=16",
                                    "run.semi_method=off"))
    assert rc == 0, err
    return config, out, err


def test_the_note_is_given_once_over_a_whole_run(staged_run):
    config, out, err = staged_run
    assert err.count(f"note: {config}") == 1 and "optim.lr 0.002 (0.004 there)" in err, err
    assert (out / "finetune" / "metrics.json").is_file()


def test_a_run_stages_config_given_back_chooses_device_and_lr_again(staged_run, tmp_path, monkeypatch):
    """The MoCo stage's config.yaml recorded only its backbone multiplier as chosen: given to `fewshot pretrain
    --config`, its lr 0.00375 (the run's 0.06 x 16 / 256) and `train.device: cpu` were pinned (a GPU machine
    trained on the CPU). Each stage records the run's choices, as train and pretrain do."""
    import fewshot.ssl.pretrain
    import fewshot.train.finetune
    from fewshot.config import chosen_in_file

    _, out, _ = staged_run
    seen = []
    monkeypatch.setattr(fewshot.ssl.pretrain, "run_pretrain", lambda cfg, *args, **kwargs: seen.append(cfg))
    monkeypatch.setattr(fewshot.train.finetune, "run_finetune", lambda cfg, *args, **kwargs: seen.append(cfg))
    for command, stage in (("pretrain", "pretrain"), ("train", "finetune")):
        config = out / stage / "config.yaml"
        assert {"optim.lr", "optim.backbone_lr_mult", "train.device"} <= set(chosen_in_file(config)), stage
        assert main([command, "--data", str(tmp_path), "--out", str(tmp_path / stage), "--config", str(config)]) == 0
        assert seen[-1]["train"]["device"] == "auto" and seen[-1]["optim"]["lr"] is None, stage
        assert seen[-1]["optim"]["backbone_lr_mult"] is None, stage


def test_a_run_stages_config_given_back_is_not_called_an_older_fewshots(tmp_path, capsys):
    """A `fewshot run` fine-tuning stage written before stages recorded their choices (its lr is run.finetune_lr,
    which no `fewshot train` rule chooses): given back as --config, the note called it "an older fewshot's run
    config.yaml", which named no `fewshot run` stage."""
    from fewshot.config import mark_rechosen, note_rechosen

    stage = tmp_path / "run" / "finetune"
    stage.mkdir(parents=True)
    cfg = resolve(overrides=["run.pretrain=true", "optim.lr=0.002", "optim.backbone_lr_mult=1.0"])
    save_yaml(cfg, stage / "config.yaml")
    (stage / "log.jsonl").write_text("")
    now = resolve(file=stage / "config.yaml")
    mark_rechosen(now, stage / "config.yaml", set())
    now["optim"].update(lr=0.004, backbone_lr_mult=1.0)  # as `fewshot train` chooses them from scratch
    note_rechosen(now)
    err = capsys.readouterr().err
    assert "optim.lr 0.004 (0.002 there)" in err and "or `fewshot run` stage)" in err, err
    assert "looks like an older" not in err


def test_the_runs_note_reads_no_weights_file(tmp_path, monkeypatch, capsys):
    """The note built the fine-tuning config, which read --weights (a .pt loaded whole) for the network it records:
    the note takes the lr rules alone, and leaves out what only the file could tell."""
    import fewshot.models.weights
    from fewshot.run_startup import note_run_rechosen

    def read(*args, **kwargs):
        raise AssertionError("the weights file was read for the note")

    monkeypatch.setattr(fewshot.models.weights, "architecture_of", read)
    cfg = resolve(overrides=[f"model.weights={tmp_path / 'backbone.pt'}", "train.device=cpu"])
    rechosen = {"file": "RUN/config.yaml", "values": {"optim.lr": 0.004, "model.width": 0.5}, "unrecorded": False}
    note_run_rechosen(cfg, rechosen, "off")
    err = capsys.readouterr().err
    assert "optim.lr 0.0001 (0.004 there)" in err and "model.width" not in err.split("again:")[1], err


def test_given_fields_are_the_flags_set_and_the_words(tmp_path):
    from fewshot.cli_config import given_fields

    flags = {"model.name": "test_resnet", "data.datasets": None, "train.seed": 0}
    assert given_fields(flags, ["optim.lr=0.01", "data.datasets=a,b"]) == {"model.name", "train.seed", "optim.lr",
                                                                            "data.datasets"}
    assert given_fields({"data.datasets": None}, []) == set()


def stage_file(folder: Path, cfg: dict) -> Path:
    """``cfg`` saved as a run stage's config.yaml, beside the log that makes the folder a run's."""
    folder.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, folder / "config.yaml")
    (folder / "log.jsonl").write_text("")
    return folder / "config.yaml"


@pytest.mark.parametrize("recorded", [True, False])
def test_a_users_run_finetune_lr_is_not_recorded_as_the_stages_choice(tmp_path, recorded):
    """finetune_config recorded optim.lr as chosen whenever optim.lr was unset, also at the user's
    run.finetune_lr=5e-4: `train --config RUN/finetune/config.yaml --weights ...` then dropped the 5e-4 for 1e-4.
    The rules for a stage without a record (an older fewshot's) took any run.finetune_lr for the run's as well."""
    from fewshot.config import chosen_in_file

    def stage(name: str, *words: str) -> dict:
        cfg = resolve(overrides=["run.pretrain=true", "train.device=cpu", *words])
        fcfg = run_stages.finetune_config(cfg, None, "off")
        if not recorded:
            fcfg.pop(CHOSEN, None)
        return chosen_in_file(stage_file(tmp_path / name / "finetune", fcfg))

    users = stage("users", "run.finetune_lr=5e-4", "run.finetune_backbone_mult=0.5")
    assert "optim.lr" not in users and "optim.backbone_lr_mult" not in users, users
    own = stage("own")
    assert own["optim.lr"] == 0.002 and own["optim.backbone_lr_mult"] == 1.0, own


@pytest.mark.parametrize("started, now, recorded", [
    ("cuda", {CHOSEN: {"train.device": "cpu"}}, "cpu"),  # auto on a GPU, resumed with auto on a CPU machine
    ("cpu", {CHOSEN: {"train.device": "cuda"}}, "cuda"),  # --device cpu, resumed with auto on a GPU
    ("cuda", {CHOSEN: {}}, None),  # auto, resumed with --device cuda: the user's now
])
def test_a_resumed_stages_device_record_follows_the_session(tmp_path, started, now, recorded):
    """stage_config put this session's device into a resumed stage's config.yaml but kept the stage's own record:
    `device: cpu` beside a recorded `cuda` was taken for the user's cpu (chosen_in_file gave {})."""
    from fewshot.config import chosen_in_file

    begun = resolve(overrides=["run.pretrain=true", f"train.device={started}"])
    begun[CHOSEN] = {"optim.lr": 0.002, **({"train.device": "cuda"} if started == "cuda" else {})}
    sdir = tmp_path / "run" / "finetune"
    stage_file(sdir, begun)
    cfg = resolve(overrides=["run.pretrain=true", f"train.device={recorded or 'cuda'}"])
    cfg.update(now)
    scfg = run_stages.stage_config(sdir, cfg)
    assert scfg[CHOSEN] == {"optim.lr": 0.002, **({"train.device": recorded} if recorded else {})}, scfg[CHOSEN]
    save_yaml(scfg, sdir / "config.yaml")  # as Engine.fit saves it
    assert chosen_in_file(sdir / "config.yaml").get("train.device") == recorded


def test_a_resumed_older_stage_gets_no_record(tmp_path):
    """A stage an older fewshot wrote has no record: one holding the device alone would pin its lr 0.004."""
    sdir = tmp_path / "run" / "finetune"
    stage_file(sdir, resolve(overrides=["train.device=cuda", "optim.lr=0.004"]))
    assert CHOSEN not in run_stages.stage_config(sdir, {**resolve(overrides=["train.device=cpu"]),
                                                      CHOSEN: {"train.device": "cpu"}})


@pytest.mark.parametrize("resume", [False, True])
def test_a_train_run_that_chose_nothing_records_so(digits_root, tmp_path, resume):
    """A run that chose nothing wrote no record, so its config.yaml looked like an older fewshot's: given back as
    --config, the user's --lr 0.004, backbone multiplier 1.0 and --device cpu were taken for the run's choices
    and chosen again (1e-4 and 0.1 under --weights, a GPU for cpu). A --resume with nothing to resume (no last.pt)
    starts fresh, and wrote no record either."""
    from helpers.checks import run_main

    from fewshot.config import chosen_in_file, config_data, file_settings
    from fewshot.train.resume_config import merge_resume_config

    out = tmp_path / "run"
    rc, _, err = run_main("train", "--data", digits_root, "--out", out, "--model", "test_resnet", "--img-size", "32",
                          "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--lr", "0.004",
                          "optim.backbone_lr_mult=1.0", "--no-progress", "train.amp=off",  # amp=auto is chosen
                          *(["--resume"] if resume else []))
    assert rc == 0, err
    config = out / "config.yaml"
    assert config_data(config)[CHOSEN] == {} and chosen_in_file(config) == {}
    pinned = file_settings(config)
    assert pinned["optim.lr"] == 0.004 and pinned["optim.backbone_lr_mult"] == 1.0, pinned
    assert pinned["train.device"] == "cpu"
    # a resume that gives the one field the run chose keeps the (now empty) record
    data = config_data(config)
    data[CHOSEN] = {"train.device": "cpu"}
    save_yaml(data, config)
    assert merge_resume_config(out, resolve(), {"train.device": "cpu"})[CHOSEN] == {}


def test_a_fewshot_run_records_even_an_empty_choice_but_not_the_size_it_chose(digits_root, tmp_path, phases_only):
    """The stages of a run that chose nothing wrote no record (taken for an older fewshot's). The image size the
    run chose for its budget is not recorded: `train --config` given a stage's file chose it again as the model's
    default (224 px for resnet18, not 32 or 64), at ~12x the cost."""
    config = tmp_path / "mine.yaml"
    config.write_text("train:\n  seed: 1\nrun:\n  pretrain: true\n")  # no size: the run chooses it
    assert main(run_argv(digits_root, tmp_path / "r", config, "--device", "cpu")) == 0
    cfg = phases_only[0].cfg
    assert cfg[CHOSEN] == {}
    assert run_stages.finetune_config(cfg, None, "off")[CHOSEN] == {"optim.lr": 0.002, "optim.backbone_lr_mult": 1.0}
    argv = [a for a in run_argv(digits_root, tmp_path / "r2", config, "--device", "cpu") if a not in ("--img-size",
                                                                                                     "32")]
    assert main(argv) == 0
    run = phases_only[1]
    assert run.cfg["model"]["img_size"] is not None and run.cfg[CHOSEN] == {}, run.cfg[CHOSEN]
    assert CHOSEN not in run.requested


def test_a_fewshot_run_records_the_model_its_weights_name(digits_root, tmp_path, monkeypatch):
    """The model a --weights file records, adopted where the user named none, is the run's choice: recorded for
    the stages (as `fewshot train` records it), but not in the settings a --resume must repeat."""
    import fewshot.models.weights

    weights = tmp_path / "backbone.safetensors"
    weights.write_bytes(b"")
    monkeypatch.setattr(fewshot.models.weights, "architecture_of", lambda path: {"model": "test_resnet"})
    seen = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda cfg, *args, **kwargs: seen.append(cfg))
    argv = ["run", "--data", str(digits_root), "--out", str(tmp_path / "r"), "--weights", str(weights),
            "--device", "cpu", "--img-size", "32", "--no-progress"]
    assert main(argv) == 0
    assert seen[0]["model"]["name"] == "test_resnet" and seen[0][CHOSEN] == {"model.name": "test_resnet"}
    run = pipeline.PipelineRun(seen[0], tmp_path / "r", 10.0, None, False)
    try:
        run.start_up()
    finally:
        release_all()
    assert CHOSEN not in run.requested and run.cfg[CHOSEN] == {"model.name": "test_resnet"}


def test_the_note_still_advises_keeping_a_non_optimiser_field_across_tasks(capsys):
    """A MoCo run's config.yaml given to fine-tuning: its lr gets no advice to keep it, but its device still does.
    Guards the cross-task advice split of config.note_rechosen (only optim.* fields lose the advice), which the
    tests of the commands check from the optimiser's side only."""
    from fewshot.config import note_rechosen

    cfg = resolve(overrides=["optim.lr=0.004", "train.device=cuda"])
    cfg[RECHOSEN] = {"file": "MOCO/config.yaml", "values": {"optim.lr": 0.015, "train.device": "cpu"},
                     "unrecorded": False, "task": "moco"}
    note_rechosen(cfg)
    err = capsys.readouterr().err
    assert "optim.lr 0.004 (0.015 there: MoCo pretraining's, not meant for fine-tuning)" in err, err
    assert "train.device cuda (cpu there)" in err and "(give e.g. train.device=cpu to keep the file's value)" in err
    assert "optim.lr=0.015" not in err, err


def out_folder_refusal(tmp_path: Path, text: str) -> str:
    """What prepare_run_dir says of an --out folder holding only a config.yaml of ``text``, which it leaves as it
    was."""
    out = tmp_path / "exp"
    out.mkdir()
    (out / "config.yaml").write_text(text)
    try:
        with pytest.raises(UserError) as refused:
            prepare_run_dir(out, False, {"data": {"root": str(tmp_path / "data")}})
    finally:
        release_all()
    assert (out / "config.yaml").read_text() == text
    return str(refused.value)


@pytest.mark.parametrize("text", ["model: [unclosed\n", "- a list\n", "0\n", "false\n", "''\n"])
def test_an_unreadable_config_in_the_out_folder_is_not_called_a_recipe(tmp_path, text):
    """A config.yaml broken off (or no config at all) was refused as "not one a run wrote (a recipe?)"; a scalar
    (`0`, `false`, `''`) is no config either, and was called empty ("blank lines or comments at most")."""
    said = out_folder_refusal(tmp_path, text)
    assert "its config.yaml is not a config fewshot can read (config file" in said, said
    assert "config.yaml is empty" not in said and "blank lines" not in said, said
    assert "cannot be read" not in said and "a recipe?" not in said, said
    assert "Move that file away" in said and "choose another --out" in said, said


@pytest.mark.parametrize("text", ["", "  \n\n", "# my notes\n# more\n", "---\n~\n"])
def test_an_empty_config_in_the_out_folder_is_called_empty(tmp_path, text):
    """A config.yaml with no settings (0 bytes, blank lines, comments) was refused as "a recipe?" with advice to
    give it as --config: it is no recipe, and no run wrote it."""
    said = out_folder_refusal(tmp_path, text)
    assert "its config.yaml is empty (no settings; blank lines or comments at most), so no run wrote it" in said, said
    assert "Delete that file (or move it away, if its comments are yours), or choose another --out" in said, said
    assert "a recipe?" not in said and "--config" not in said and "fewshot can read" not in said, said


def test_an_empty_mapping_in_the_out_folder_is_said_to_hold_no_settings(tmp_path):
    """`{}` is a mapping with nothing in it, not a file with "blank lines or comments at most"."""
    said = out_folder_refusal(tmp_path, "{}\n")
    assert "its config.yaml is an empty mapping (`{}`: no settings), so no run wrote it" in said, said
    assert "blank lines" not in said and "a recipe?" not in said and "fewshot can read" not in said, said


def test_an_out_folder_config_that_cannot_be_read_is_said_so(tmp_path, monkeypatch):
    """A config.yaml the system cannot read (no permission) is one that "cannot be read", not a bad config."""
    import fewshot.config

    def refused_read(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(fewshot.config.yaml_io, "load_yaml_or_none", refused_read)  # root reads any file
    said = out_folder_refusal(tmp_path, "model:\n  name: resnet18\n")
    assert "its config.yaml cannot be read (Permission denied)" in said and "fewshot can read" not in said, said


@pytest.mark.parametrize("model, stage_record, recorded", [
    ("test_resnet2", None, {}),  # the user's --model, taken back from run_state.json: theirs
    ("test_resnet2", {}, {}),
    ("test_resnet", {"model.name": "test_resnet"}, {"model.name": "test_resnet"}),  # adopted from the weights
])
def test_a_resumed_fewshot_run_records_the_model_as_its_stages_do(digits_root, tmp_path, monkeypatch, model,
                                                                   stage_record, recorded):
    """A run started with `--model test_resnet2 --weights w` (w records test_resnet), resumed without --model, took
    its model from run_state.json and recorded it as chosen: the stages begun then wrote it, and `train --config
    STAGE/config.yaml --weights w` swapped the user's model for w's. A model the run adopted stays recorded."""
    import json

    import fewshot.models.weights
    from fewshot.run_state import STATE_FILE

    weights = tmp_path / "backbone.safetensors"
    weights.write_bytes(b"")
    monkeypatch.setattr(fewshot.models.weights, "architecture_of", lambda path: {"model": "test_resnet"})
    seen = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda cfg, *args, **kwargs: seen.append(cfg))
    out = tmp_path / "r"
    out.mkdir()
    (out / STATE_FILE).write_text(json.dumps({"config": {"model": {"name": model, "weights": str(weights)}}}))
    if stage_record is not None:
        stage = resolve(overrides=[f"model.name={model}", "train.device=cpu"])
        stage[CHOSEN] = stage_record
        stage_file(out / "pretrain", stage)
    argv = ["run", "--data", str(digits_root), "--out", str(out), "--weights", str(weights), "--device", "cpu",
            "--img-size", "32", "--no-progress", "--resume"]
    assert main(argv) == 0
    assert seen[0]["model"]["name"] == model and seen[0].get(CHOSEN, {}) == recorded, seen[0].get(CHOSEN)
