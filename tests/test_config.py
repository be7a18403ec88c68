"""Config resolution: how values typed on the command line or in a --config file are read, checked and reported."""

from __future__ import annotations

import pytest

from fewshot.cli import main
from fewshot.cli_config import note_flags_overridden
from fewshot.cli_run import RUN_FLAG_NAMES
from fewshot.config import resolve
from fewshot.errors import UserError


def test_scientific_notation_inside_a_list_is_a_number(tmp_path):
    """YAML 1.1 reads 1e-1 (no dot) as text: single values were converted, list items were refused."""
    assert resolve(overrides=["aug.scale=[1e-1,1]"])["aug"]["scale"] == [0.1, 1]
    path = tmp_path / "f.yaml"
    path.write_text("aug:\n  scale: [2e-1, 1.0]\n  jitter: [4e-1, 0.4, 0.4, 1e-1]\n")
    aug = resolve(file=path)["aug"]
    assert aug["scale"] == [0.2, 1.0] and aug["jitter"] == [0.4, 0.4, 0.4, 0.1]
    with pytest.raises(UserError, match="aug.scale must be"):  # text that is no number is still refused
        resolve(overrides=["aug.scale=[low,1]"])


def test_a_word_yaml_reads_as_true_is_shown_as_typed():
    with pytest.raises(UserError) as caught:
        resolve(overrides=["train.amp=on"])
    assert "not 'on'" in str(caught.value) and "True" not in str(caught.value)


@pytest.mark.parametrize("word, field", [("moco.queue_size=1000000000000", "moco.queue_size"),
                                         ("moco.dim=100000000", "moco.dim"),
                                         ("run.queue_size=1000000000000", "run.queue_size")])
def test_a_moco_queue_that_cannot_fit_in_memory_is_refused(word, field):
    with pytest.raises(UserError, match=f"^{field} .*more than"):
        resolve(overrides=[word])
    assert resolve(overrides=["moco.queue_size=65536"])["moco"]["queue_size"] == 65536


def test_a_huge_queue_size_flag_is_a_user_error_before_any_folder(tmp_path, capsys):
    out = tmp_path / "pre"
    assert main(["pretrain", "--data", str(tmp_path), "--out", str(out), "--device", "cpu",
                 "--queue-size", "1000000000000"]) == 2
    assert "error: --queue-size 1000000000000: moco.queue_size 1000000000000" in capsys.readouterr().err
    assert not out.exists()


def test_a_bad_value_names_the_flag_that_gave_it(tmp_path, capsys):
    base = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*base, "--epochs", "-1"]) == 2
    assert "error: --epochs -1: train.epochs must be at least 1, not -1" in capsys.readouterr().err
    assert main([*base, "--epochs", "3", "train.epochs=-2"]) == 2  # the word won: its name is the one to show
    assert "error: train.epochs must be at least 1, not -2" in capsys.readouterr().err


def test_the_same_setting_in_another_spelling_is_no_replacement(capsys):
    note_flags_overridden({"run.semi_method": "off"}, RUN_FLAG_NAMES, ["run.semi_method=off"])
    assert capsys.readouterr().err == ""
    note_flags_overridden({"run.semi_method": "off"}, RUN_FLAG_NAMES, ["run.semi_method=fixmatch"])
    assert "run.semi_method=fixmatch replaces --semi/--baseline off" in capsys.readouterr().err


def test_a_field_given_twice_notes_that_the_last_wins(capsys):
    note_flags_overridden({}, {}, ["optim.lr=1e-3", "optim.lr=2e-3"])
    assert "note: optim.lr=2e-3 replaces optim.lr=1e-3" in capsys.readouterr().err
    note_flags_overridden({}, {}, ["optim.lr=1e-3", "optim.lr=0.001"])  # the same number
    assert capsys.readouterr().err == ""


def test_run_warns_of_config_file_fields_it_sets_itself(tmp_path, capsys):
    from fewshot.cli_warnings import warn_replaced_config_fields

    path = tmp_path / "f.yaml"
    path.write_text("semi:\n  method: fixmatch\nmoco:\n  queue_size: 64\noptim:\n  lr: 1e-3\n")
    warn_replaced_config_fields(str(path))
    err = capsys.readouterr().err
    assert "warning: semi.method: fixmatch in" in err and "warning: moco.queue_size: 64 in" in err
    assert "optim.lr" not in err
    path.write_text("semi:\n  method: off\ntrain:\n  epochs: 50\n")  # the defaults, as a run's config.yaml holds
    warn_replaced_config_fields(str(path))
    assert capsys.readouterr().err == ""


def test_an_empty_section_of_a_config_file_is_no_setting(tmp_path):
    from fewshot.config import file_settings

    path = tmp_path / "f.yaml"
    path.write_text("optim:\ntrain: {epochs: 2}\n")
    assert file_settings(path) == {"train.epochs": 2}


def test_unknown_fields_of_a_saved_config():
    from fewshot.config import unknown_fields

    assert unknown_fields({"_task": "moco", "train": {"epochs": 1, "epochz": 6}, "trian": {}}) == ["train.epochz",
                                                                                                   "trian"]
