"""Advice that failed when followed literally (hunt hAZ): a missing --data under a real root was told to build the
demo data there (which broke the root), eval and predict were told the same (the demo data holds none of the run's
datasets), `fewshot data --out` inside a root or dataset was accepted, a budget refusal named the very budget it
refused, `fewshot report` was told to pass a flag it lacked, and the near-chance warning named `--config cpu_tiny`
(resnet18 at 32 px, what `fewshot run` already picks) as the smaller model. Each test follows the new advice."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from fewshot.cli_parser import build_parser
from fewshot.data.build import build_dataset
from fewshot.data.layout import scan_root
from fewshot.data.roots import list_datasets
from fewshot.errors import UserError
from helpers.checks import run_main
from helpers.tiny import trained_tiny_run

TINY = dict(shots=2, val_per_class=1, test_per_class=1, pool_per_class=1, progress=False)


def _suggested(message: str, pattern: str):
    """The flags a message suggests (a `--data ... [--datasets ...]` run of words), parsed as train parses them."""
    flags = re.search(pattern, message).group(1)
    return build_parser().parse_args(["train", "--out", "r", *shlex.split(flags)])


def test_a_typo_under_a_root_points_at_the_root_not_at_building_data_there(copy_root, dataset_names):
    """`--data ROOT/digitz`: the demo data built there made ROOT's listing refuse it."""
    with pytest.raises(UserError) as info:
        list_datasets(copy_root / f"{dataset_names[0]}z")
    message = str(info.value)
    assert "fewshot data digits" not in message and "did you mean" in message, message
    args = _suggested(message, r"did you mean (--data .*)\?")
    assert Path(args.data) == copy_root and args.datasets == dataset_names[0], message
    assert [i.name for i in scan_root(args.data, args.datasets)] == [dataset_names[0]]  # the advice works


def test_a_path_inside_a_dataset_points_at_the_root_above_it(copy_root, dataset_names):
    with pytest.raises(UserError) as info:
        list_datasets(copy_root / dataset_names[0] / "train" / "nope")
    args = _suggested(str(info.value), r"did you mean (--data .*)\?")
    assert Path(args.data) == copy_root and args.datasets == dataset_names[0], str(info.value)


def test_a_missing_root_beside_a_root_of_a_close_name_names_that_root(copy_root):
    with pytest.raises(UserError) as info:
        list_datasets(copy_root.parent / "rooot")
    message = str(info.value)
    assert "fewshot data digits" not in message, message
    args = _suggested(message, r"Did you mean (--data [^ ?]*)")
    assert Path(args.data) == copy_root and list_datasets(Path(args.data)), message


def test_a_missing_root_with_no_data_near_it_still_suggests_the_demo_data(tmp_path):
    with pytest.raises(UserError, match=r"Build the demo data with `fewshot data digits --out "):
        list_datasets(tmp_path / "nothing" / "here")


@pytest.fixture(scope="module")
def tiny_run(digits_root, tmp_path_factory) -> Path:
    return trained_tiny_run(digits_root, tmp_path_factory.mktemp("fct") / "run")


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_eval_and_predict_of_a_run_name_its_own_root(tiny_run, digits_root, tmp_path, command):
    """The demo data holds none of the run's datasets (fashion-mnist): built at --data, it was refused again."""
    out = ["--out", tmp_path / "p.json"] if command == "predict" else []
    rc, _, err = run_main(command, tiny_run, "--data", tmp_path / "nowhere", *out, "--device", "cpu")
    assert rc == 2 and "fewshot data digits" not in err, err
    data = re.search(r"The run was trained on --data (\S+);", err).group(1)
    assert Path(shlex.split(data)[0]) == digits_root, err
    rc, _, err = run_main(command, tiny_run, "--data", shlex.split(data)[0], *out, "--device", "cpu")
    assert rc == 0, err


@pytest.mark.parametrize("where", ["typo", "dataset"])
def test_data_refuses_an_out_inside_a_root_or_a_dataset_folder(copy_root, dataset_names, where):
    """`fewshot data digits --out ROOT/digitz` (the old advice) broke ROOT; `--out ROOT/digits` wrote into it."""
    out = copy_root / ("digitz" if where == "typo" else dataset_names[0])
    before = sorted(p.relative_to(copy_root) for p in copy_root.rglob("*"))
    with pytest.raises(UserError, match="lies inside the dataset (root|folder)") as info:
        build_dataset("digits", out, **TINY)
    assert sorted(p.relative_to(copy_root) for p in copy_root.rglob("*")) == before, str(info.value)
    assert scan_root(copy_root)  # the root still trains


def test_data_into_a_root_that_lacks_the_dataset_is_suggested_and_works(tmp_path):
    root = tmp_path / "root"
    build_dataset("digits", root, **TINY)
    (root / "digits").rename(root / "other")
    (root / "unlabeled" / "digits").rename(root / "unlabeled" / "other")
    with pytest.raises(UserError) as info:
        build_dataset("digits", root / "digitz", **TINY)
    out = re.search(r"\(--out (\S+) adds digits/", str(info.value)).group(1)
    build_dataset("digits", Path(shlex.split(out)[0]), **TINY)
    assert sorted(list_datasets(root)) == ["digits", "other"]


def _hopeless(budget_minutes: float, used_s: float, step_s: float, monkeypatch):
    """ClosingMixin.refuse_if_hopeless on a run whose start-up took ``used_s`` and whose step takes ``step_s``."""
    from fewshot import run_closing, run_budget
    from helpers.run_patch import patch_pipeline

    patch_pipeline(monkeypatch, "least_run_holds", run_budget.least_run_holds)
    monkeypatch.setattr(run_closing, "time", SimpleNamespace(monotonic=lambda: 100.0 + used_s))
    run = SimpleNamespace(resume=False, budget_minutes=budget_minutes, timed_step_s=None, t_start=100.0,
                          state=None, locked=True, semi="pseudo", undo_start=lambda: None,
                          cfg={"model": {"name": "test_resnet", "img_size": 32}, "run": {"pretrain": True}})
    run.training_began = lambda: False
    run.least_run_hints = lambda moco: run_closing.ClosingMixin.least_run_hints(run, moco)
    run_closing.ClosingMixin.refuse_if_hopeless(run, step_s, None)


def test_a_budget_refusal_names_a_budget_that_is_not_refused(monkeypatch):
    """0.1 minutes, 4.1 s of start-up, 33 ms steps: refused on the 2 s floor, told "0.1 or more" from 0.2 s."""
    with pytest.raises(UserError) as info:
        _hopeless(0.1, 4.1, 0.033, monkeypatch)
    least = float(re.search(r"Give --budget-minutes ([0-9.]+) or more", str(info.value)).group(1))
    assert least > 0.1, str(info.value)
    _hopeless(least, 4.1, 0.033, monkeypatch)  # followed: not refused again


def test_the_budget_named_is_above_the_refused_one_whatever_the_need():
    """A need given too small (4.3 s in all of a 6 s budget) rounded to the refused 0.1 minutes."""
    from fewshot.run_budget import too_short_budget_error

    for budget_s in (6.0, 9.0, 12.0, 30.0):
        text = str(too_short_budget_error(budget_s, 0.7 * budget_s, 0.23, 0.033, "m", ""))
        least = float(re.search(r"Give --budget-minutes ([0-9.]+) or more", text).group(1))
        assert least > budget_s / 60, text


def test_report_takes_the_skip_bad_images_its_hint_names(tiny_run, digits_root, tmp_path, dataset_names):
    from helpers.tiny import copy_data_root

    root = copy_data_root(digits_root, tmp_path / "root")
    bad = sorted((root / dataset_names[0] / "val").glob("*/*"))[0]
    bad.write_bytes(b"not an image")
    rc, out, err = run_main("report", tiny_run, "--data", root, "--out", tmp_path / "rep1", "--device", "cpu")
    assert rc == 0 and "--skip-bad-images" in out + err, out + err
    rc, out, err = run_main("report", tiny_run, "--data", root, "--out", tmp_path / "rep2", "--device", "cpu",
                            "--skip-bad-images")
    assert rc == 0 and "Image-based parts skipped" not in out + err and "undecodable" in err, out + err
    assert (tmp_path / "rep2" / "index.html").read_text().count("--skip-bad-images") >= 1  # its rebuild command


@pytest.mark.parametrize("n_parameters", [11_179_590, 370_000, 2_820_000, None])
def test_the_near_chance_advice_names_only_a_model_smaller_than_the_runs(n_parameters):
    """cpu_tiny (resnet18 at 32 px) was named to a resnet18 run at 32 px made with --config cpu_tiny, and to a
    0.37M-parameter test_resnet."""
    from fewshot.run_words import SMALLER_MODEL_PARAMS, near_chance_why

    found = {"a": {"val_near_chance": True, "val_acc1": 20.0, "chance_acc1": 20.0, "classes": 5}}
    why = near_chance_why(found, "finetune", 1.5, n_parameters)
    assert "cpu_tiny" not in why and "--budget-minutes" in why, why
    named = "model.width=0.5" in why
    assert named == (n_parameters is not None and n_parameters >= 2 * SMALLER_MODEL_PARAMS), why


def test_the_smaller_model_named_is_smaller(settings_only_run, digits_root, tmp_path):
    """Followed: `fewshot run ... --model resnet18 model.width=0.5` builds a model of the parameters named."""
    from fewshot.models.classifier import build_classifier
    from fewshot.run_words import SMALLER_MODEL, SMALLER_MODEL_PARAMS

    rc, _, err = run_main("run", "--data", digits_root, "--out", tmp_path / "r", "--budget-minutes", "1",
                          "--device", "cpu", "--img-size", "32", *shlex.split(SMALLER_MODEL))
    assert rc == 0, err
    model = build_classifier({**settings_only_run[-1], "model": {**settings_only_run[-1]["model"], "weights": None}},
                             10)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - SMALLER_MODEL_PARAMS) < 0.05 * SMALLER_MODEL_PARAMS and n < 11_179_590 / 2, n


def test_data_into_an_existing_empty_folder_beside_a_dataset_folder_builds(tmp_path):
    """An existing --out is the root the user chose: pytest's tmp_path lies beside other tests' folders, some of
    them dataset folders (train/<class>/<image>), and `build_dataset(..., tmp_path)` was refused as made "inside the
    dataset root" of their parent, so test_build.py failed or passed by test order."""
    neighbour = tmp_path / "neighbour" / "train" / "a"
    neighbour.mkdir(parents=True)
    Image.new("L", (8, 8)).save(neighbour / "0.png")
    out = tmp_path / "mine"
    out.mkdir()
    build_dataset("digits", out, **TINY)
    assert list_datasets(out) == ["digits"]


def _image(folder: Path) -> None:
    folder.mkdir(parents=True)
    Image.new("L", (8, 8)).save(folder / "0.png")


@pytest.mark.parametrize("near", ["test", "src/test", "kaggle/train/dog/0.png"])
def test_a_project_folder_beside_a_missing_root_gets_the_demo_data_advice_that_works(tmp_path, near):
    """`mkdir -p proj/test; cd proj; fewshot train --data demo_data` was told "did you mean --data .. --datasets
    proj" (an empty test/ made proj a dataset), and following it was refused: no dataset there is one training
    accepts (train/ and val/), so the demo data is advised, and building it where told works."""
    proj = tmp_path / "proj"
    if near.endswith(".png"):
        _image(proj / Path(near).parent)
    else:
        (proj / near).mkdir(parents=True)
    with pytest.raises(UserError) as info:
        list_datasets(proj / "demo_data")
    message = str(info.value)
    assert "did you mean" not in message.lower(), message
    out = re.search(r"`fewshot data digits --out (.+)`", message).group(1)
    build_dataset("digits", Path(shlex.split(out)[0]), **TINY)  # followed
    assert list_datasets(proj / "demo_data") == ["digits"]


@pytest.mark.parametrize("where", ["project", "beside"])
def test_data_builds_a_new_root_near_an_image_folder_that_is_no_fewshot_root(tmp_path, where):
    """`cd home/proj; fewshot data digits --out fewshot_data` with home/proj/train/cat/0.png (an ImageFolder) was
    refused as "inside the dataset folder", and `--out dl/demo_data` beside dl/kaggle/train/dog was told to build
    into dl (the user's Downloads): neither is a fewshot root (its datasets have train/ and val/)."""
    if where == "project":
        _image(tmp_path / "home" / "proj" / "train" / "cat")
        out = tmp_path / "home" / "proj" / "fewshot_data"
    else:
        _image(tmp_path / "dl" / "kaggle" / "train" / "dog")
        out = tmp_path / "dl" / "demo_data"
    build_dataset("digits", out, **TINY)
    assert list_datasets(out) == ["digits"]


def test_data_into_an_image_folder_names_no_root_that_is_none(tmp_path):
    """`--out dl/kaggle` (a train/<class>/<image> folder) is refused, as its folders would join that data, but its
    parent is no fewshot root: "or that root itself (--out dl ...)" sent the demo data into the user's Downloads."""
    _image(tmp_path / "dl" / "kaggle" / "train" / "dog")
    with pytest.raises(UserError, match="lies inside the dataset folder") as info:
        build_dataset("digits", tmp_path / "dl" / "kaggle", **TINY)
    assert "that root itself" not in str(info.value), str(info.value)


def test_a_refusal_on_the_floor_names_the_floor_and_no_smaller_model(monkeypatch):
    """0.1 minutes, 4.1 s of start-up, 33 ms steps: the 2 s floor refused, not the steps (0.2 s), yet the words
    said "its steps alone" and hinted at a smaller --model or --img-size, or no --pretrain, none of which shortens
    the floor. A budget refused on its steps keeps those hints."""
    with pytest.raises(UserError) as info:
        _hopeless(0.1, 4.1, 0.033, monkeypatch)
    message = str(info.value)
    assert "smaller --model" not in message and "--pretrain," not in message, message
    assert "its steps alone" not in message and "any run" in message, message
    assert float(re.search(r"Give --budget-minutes ([0-9.]+) or more", message).group(1)) > 0.1, message
    with pytest.raises(UserError) as info:
        _hopeless(0.1, 1.0, 1.0, monkeypatch)  # 6 steps of 1 s: the steps refused
    assert "smaller --model" in str(info.value) and "its steps alone" in str(info.value), str(info.value)


def test_a_run_from_weights_is_told_no_smaller_model():
    """A resnet18 run from --weights was told `--model resnet18 model.width=0.5`; added to its command, the weights
    did not fit that model and the run was refused."""
    from fewshot.pipeline import PipelineRun

    pred = {"n_parameters": 11_179_590, "ten": {str(i): 0 for i in range(50)}}
    val = {"datasets": {"ten": {"acc1": 10.0, "n": 100}}}
    info = SimpleNamespace(classes=tuple(f"c{c}" for c in range(10)),
                           val=tuple((Path(f"{c}_{i}.png"), c) for c in range(10) for i in range(10)))
    said = {}
    for weights in (None, "bb18.safetensors"):
        run = SimpleNamespace(summary={"stages": {"finetune": {"epochs": 2.0}}}, fdir=Path("RUN") / "finetune",
                              cfg={"model": {"weights": weights}})
        PipelineRun.note_near_chance(run, pred, val, {"ten": info})
        said[weights] = run.summary["near_chance"]["why"]
    assert "model.width=0.5" in said[None] and "model.width=0.5" not in said["bb18.safetensors"], said
    assert "--budget-minutes" in said["bb18.safetensors"], said


def _setting_up(root: Path) -> Path:
    """ROOT/mine/{train,val}/{cat,dog}, the class folders made and the images not yet copied in."""
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            (root / "mine" / split / label).mkdir(parents=True)
    return root


@pytest.mark.parametrize("typo", ["mien", "mine/trian"])
def test_a_root_being_set_up_is_named_not_built_inside(tmp_path, typo):
    """`--data R/mien` of a R/mine/{train,val}/{cat,dog} with no images yet was told to build the demo data at
    R/mien (inside the root, `--data R/mine/trian`: inside the dataset); the images copied in, R was refused."""
    root = _setting_up(tmp_path / "R")
    with pytest.raises(UserError) as info:
        list_datasets(root / typo)
    message = str(info.value)
    assert "fewshot data digits" not in message, message
    args = _suggested(message, r"did you mean (--data .*)\?")
    assert Path(args.data) == root and args.datasets == "mine", message
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            Image.new("L", (8, 8)).save(root / "mine" / split / label / "0.png")
    assert [i.name for i in scan_root(args.data, args.datasets)] == ["mine"]  # followed, once the images are in


@pytest.mark.parametrize("where", ["below", "beside"])
def test_the_root_advice_names_the_datasets_where_the_root_holds_other_folders(copy_root, dataset_names, where):
    """ROOT/proj/test (empty) beside the datasets: "did you mean --data ROOT?" was refused when followed
    ("ROOT/proj/train: missing split folder 'train'"); the advice names the datasets, and following it trains."""
    (copy_root / "proj" / "test").mkdir(parents=True)
    missing = copy_root / "zzqqx" if where == "below" else copy_root.parent / f"{copy_root.name}o"
    with pytest.raises(UserError) as info:
        list_datasets(missing)
    message = str(info.value)
    args = _suggested(message, r"[dD]id you mean (--data [^?]*)\?")
    assert Path(args.data) == copy_root and args.datasets == ",".join(dataset_names), message
    assert sorted(i.name for i in scan_root(args.data, args.datasets)) == dataset_names  # followed


@pytest.mark.parametrize("typo", ["shpo", "../Pp"])
def test_eval_and_predict_are_pointed_at_a_root_of_test_only_datasets(tmp_path, typo):
    """P/shop/test/a.jpg is a root predict accepts; its typos (`P/shpo`, `Pp`) got only the layout text. Training,
    which needs train/ and val/, is still not pointed there."""
    _image(tmp_path / "P" / "shop" / "test")
    missing = tmp_path / "P" / typo
    with pytest.raises(UserError) as info:
        list_datasets(missing, demo=False)  # as eval and predict call it (predict._check_root)
    message = str(info.value)
    args = _suggested(message, r"[dD]id you mean (--data [^?]*)\?")
    assert Path(args.data).resolve() == (tmp_path / "P").resolve() and args.datasets in (None, "shop"), message
    assert [i.name for i in scan_root(args.data, args.datasets, splits=("test",))] == ["shop"]  # followed
    with pytest.raises(UserError) as info:
        list_datasets(missing)
    assert "did you mean" not in str(info.value).lower(), str(info.value)


def test_a_refusal_on_the_floor_names_a_total_above_the_budget_and_no_false_claim(monkeypatch):
    """The floor refusal rounded its total to whole seconds: "0.1 is too short ... 6 s in all" named the budget it
    refused; and it said the least budget named "is the same for any --model, --img-size or --pretrain", though
    the start-up it counts is not."""
    for minutes, used_s in ((0.1, 4.1), (0.5, 28.2)):
        with pytest.raises(UserError) as info:
            _hopeless(minutes, used_s, 0.033, monkeypatch)
        message = str(info.value)
        over, total = re.search(r"(over )?([0-9.]+) s in all", message).groups()
        assert float(total) > minutes * 60 or (over and float(total) >= minutes * 60), message
        assert "--pretrain" not in message and "is the same for any" not in message, message


@pytest.mark.parametrize("inside", ["nothing", "images"])
def test_a_project_with_train_and_val_but_no_class_folder_gets_the_demo_data_advice(tmp_path, inside):
    """proj/{train,val} empty, or with images directly in them: `fewshot train --data data` there was told "proj is
    a dataset folder ... did you mean --data .. --datasets proj", refused when followed (rev63 #4)."""
    proj = tmp_path / "proj"
    for split in ("train", "val"):
        (proj / split).mkdir(parents=True)
        if inside == "images":
            Image.new("L", (8, 8)).save(proj / split / "0.png")
    with pytest.raises(UserError) as info:
        list_datasets(proj / "data")
    message = str(info.value)
    assert "did you mean" not in message.lower() and "fewshot data digits" in message, message


def test_eval_of_the_val_split_is_not_pointed_at_a_test_only_root(tmp_path):
    """`eval --split val` cannot use a test-only dataset, but was pointed at P/shop/test/a.jpg's root (rev63 #5):
    only predict and `eval --split test` are."""
    from fewshot.eval.predict import _check_root

    _image(tmp_path / "P" / "shop" / "test")
    tm = SimpleNamespace(cfg={})
    said = {}
    for split in ("val", "test"):
        with pytest.raises(UserError) as info:
            _check_root(tm, tmp_path / "P" / "shpo", split)
        said[split] = str(info.value).lower()
    assert "did you mean" not in said["val"] and "did you mean" in said["test"], said
