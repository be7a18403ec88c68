"""Config words a hunt (hBC, findings 6-8) found accepted, misread or refused late: key=value words `fewshot train`
never reads passed without a warning (SGD's momentum under AdamW, data.repeats without the repeat sampler,
sched.time_based without a budget, the pool's fields without a pool method); `None` became the text 'None' (a cache
folder named None); messages named a flag or a dotted key the user did not type; and huge whole numbers crashed
the started run (exit 1, a traceback) instead of being refused at start."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from helpers.checks import run_main

FINDING_6 = ["optim.momentum=0.5", "optim.fused=true", "data.repeats=5", "sched.time_based=true",
             "data.unlabeled=/nonexistent", "data.skip_bad_unlabeled=false"]


def said_of(command: str, words: list[str], settings: list[str] = (), **kwargs) -> list[str]:
    """The unused-word warnings ``command`` gives ``words`` with ``settings`` (words too) in force."""
    from fewshot.cli_warnings import unused_override_warnings
    from fewshot.config import resolve

    preset = {"default_preset": "mocov2"} if command == "pretrain" else {}
    cfg = resolve(overrides=[*settings, *words], **preset)
    return unused_override_warnings(command, cfg, words, **kwargs)


def named(said: list[str], word: str) -> bool:
    return any(line.startswith("warning:") and word in line.split(" do")[0] for line in said)


# ------------------------------------------------------------------------------ finding 6: unused words


def test_train_names_each_word_it_never_reads():
    said = said_of("train", FINDING_6)
    assert all(named(said, word) for word in FINDING_6), said
    assert all("nothing" in line for line in said), said


def test_train_is_silent_where_the_setting_that_reads_them_is_given():
    settings = ["optim.name=sgd", "data.sampler=repeat", "train.budget_minutes=5", "semi.method=fixmatch"]
    assert said_of("train", FINDING_6, settings) == []
    assert said_of("train", ["data.unlabeled=/x"], ["semi.method=moco"]) == []


def test_pretrain_reads_sgd_fields_and_the_pool_but_not_time_based_without_a_budget():
    words = ["optim.momentum=0.5", "optim.fused=true", "data.unlabeled=/x", "data.skip_bad_unlabeled=false"]
    assert said_of("pretrain", words) == []  # mocov2's SGD, MoCo's pool
    assert named(said_of("pretrain", ["optim.momentum=0.5"], ["optim.name=adamw"]), "optim.momentum=0.5")
    assert named(said_of("pretrain", ["sched.time_based=true"]), "sched.time_based=true")
    assert said_of("pretrain", ["sched.time_based=true"], ["train.budget_minutes=2"]) == []


def test_run_warns_of_momentum_its_moco_stage_sets_itself_but_reads_fused_there():
    said = said_of("run", ["optim.momentum=0.5", "optim.fused=true"], ["run.pretrain=true"])
    assert named(said, "optim.momentum=0.5") and not named(said, "optim.fused=true"), said
    assert named(said_of("run", ["optim.fused=true"]), "optim.fused=true")
    assert said_of("run", ["optim.momentum=0.5", "optim.fused=true"], ["optim.name=sgd"]) == []


def test_run_reads_the_pool_with_any_pool_method_only():
    words = ["data.unlabeled=/x", "data.skip_bad_unlabeled=false"]
    assert said_of("run", words) == []  # self-training (the default) labels the pool
    assert said_of("run", words, ["run.semi_method=off", "run.pretrain=true"]) == []
    said = said_of("run", words, ["run.semi_method=off"], baseline=True)
    assert all(named(said, word) for word in words) and "--baseline" in said[0], said


def test_run_leaves_time_based_to_its_replaced_warning():
    """`fewshot run` sets sched.time_based itself: warn_replaced_overrides says so, not this warning."""
    assert said_of("run", ["sched.time_based=true"]) == []


# ------------------------------------------------------------------------------ finding 7: None and names


@pytest.mark.parametrize("word", ["data.cache_dir=None", "model.weights=none", "data.unlabeled=NONE",
                                  "optim.lr=None", "train.amp=None"])  # data.datasets=None: a dataset's name
def test_python_none_reads_as_null(word):
    from fewshot.config import parse_override

    assert parse_override(word)[1] is None


def test_none_stays_a_word_where_it_is_one_and_quoted_text_stays_text():
    from fewshot.config import parse_override

    assert parse_override("moco.shuffle_bn=none")[1] == "none"
    assert parse_override('data.cache_dir="None"')[1] == "None"


def test_none_words_resolve_as_unset():
    from fewshot.config import resolve

    cfg = resolve(overrides=["data.cache_dir=None", "model.weights=None", "optim.lr=None"])
    assert cfg["data"]["cache_dir"] is None and cfg["model"]["weights"] is None and cfg["optim"]["lr"] is None


def test_train_with_a_none_cache_dir_makes_no_folder_named_none(digits_root, tmp_path, monkeypatch):
    from fewshot.train import finetune

    given = []
    monkeypatch.setattr(finetune, "run_finetune", lambda cfg, *a, **k: given.append(cfg))
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_main("train", "--data", digits_root, "--out", tmp_path / "t", "--model", "test_resnet",
                          "--device", "cpu", "--no-progress", "data.cache_dir=None", "model.weights=None")
    assert rc == 0 and "Traceback" not in err, err
    assert given[0]["data"]["cache_dir"] is None and given[0]["model"]["weights"] is None
    assert not (tmp_path / "None").exists()


def test_a_top_level_dotted_key_in_a_file_says_to_nest_it(tmp_path):
    from fewshot.config import resolve
    from fewshot.errors import UserError

    path = tmp_path / "c.yaml"
    path.write_text("optim.lr: 1e-3\n")
    with pytest.raises(UserError) as exc:
        resolve(file=path)
    assert "`optim:`" in str(exc.value) and "lr: 1e-3" in str(exc.value), exc.value
    path.write_text("optim.lrr: 1e-3\n")  # no such field: the plain message
    with pytest.raises(UserError, match="Known fields here"):
        resolve(file=path)


def test_batch_size_messages_name_the_field_as_well_as_the_flag():
    from fewshot.ssl.pretrain_settings import split_groups
    from fewshot.train.start_checks import empty_epoch_error

    task = SimpleNamespace(kind="supervised", train_set=[0] * 5)
    said = str(empty_epoch_error(task, {"train": {"batch_size": 1}}, 1))
    assert "train.batch_size=1" in said and "--batch-size 1" in said, said
    moco = {"shuffle_bn": "auto", "split_bn_groups": 4}
    for bs in (1, 6, 4):  # too small for BatchNorm, not a multiple of the groups, 1 image a group
        with pytest.raises(Exception) as exc:
            split_groups({"moco": moco, "train": {"batch_size": bs}}, 1)
        assert f"train.batch_size={bs}" in str(exc.value), exc.value


# ------------------------------------------------------------------------------ finding 8: huge whole numbers


@pytest.mark.parametrize("word", ["data.randaug_group=1e30", "data.randaug_group=1e19", "data.repeats=1e19",
                                  "sched.warmup_epochs=1e308", "data.randaug_ops=1e19", "train.epochs=1e19",
                                  "moco.knn_k=1e19", "semi.mu=3e9"])
def test_huge_counts_are_refused_with_their_bound(word):
    from fewshot.config import FieldError, resolve

    with pytest.raises(FieldError) as exc:
        resolve(overrides=[word])
    assert word.split("=")[0] in str(exc.value) and "at most" in str(exc.value), exc.value


@pytest.mark.parametrize("word", ["data.randaug_group=2147483647", "data.repeats=1024", "data.randaug_ops=100",
                                  "sched.warmup_epochs=2147483647"])
def test_the_bounds_themselves_are_accepted(word):
    from fewshot.config import resolve

    resolve(overrides=[word])


def test_train_refuses_a_huge_count_at_start(digits_root, tmp_path, monkeypatch):
    from fewshot.train import finetune

    monkeypatch.setattr(finetune, "run_finetune", lambda *a, **k: None)  # a refusal comes before it
    rc, _, err = run_main("train", "--data", digits_root, "--out", tmp_path / "t", "--model", "test_resnet",
                          "--device", "cpu", "--no-progress", "data.randaug_group=1e30")
    assert rc == 2 and "Traceback" not in err and "data.randaug_group" in err and "at most" in err, err
