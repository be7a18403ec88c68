"""Every shipped config resolves (no unknown fields) and names a model timm can build."""

import re
from pathlib import Path

import pytest
import timm

from fewshot.config import resolve
from fewshot.errors import UserError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 6


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_resolves(path):
    preset = "mocov2" if path.name.startswith("moco") else None
    cfg = resolve(preset=preset, file=path)
    assert timm.is_model(cfg["model"]["name"])


def test_layering_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.5\ntrain:\n  epochs: 3\n")
    cfg = resolve(file=f, flags={"train.epochs": 4}, overrides=["optim.lr=3e-4", "data.datasets=[a, b]"])
    assert cfg["optim"]["lr"] == 3e-4 and cfg["train"]["epochs"] == 4 and cfg["data"]["datasets"] == ["a", "b"]


def test_unknown_fields_refused(tmp_path):
    with pytest.raises(UserError, match="optim.lrr"):
        resolve(overrides=["optim.lrr=1"])
    f = tmp_path / "bad.yaml"
    f.write_text("optim:\n  nope: 1\n")
    with pytest.raises(UserError, match="optim.nope"):
        resolve(file=f)
    with pytest.raises(UserError, match="section"):
        resolve(overrides=["optim=1"])


@pytest.mark.parametrize("word, message", [
    ("train.epochs=ten", "train.epochs must be a whole number, not 'ten'"),
    ("model.small_stem=2", "model.small_stem must be true or false"),
    ("train.batch_size=0", "train.batch_size must be at least 1"),
    ("data.sampler=random", "data.sampler must be one of shuffle, repeat, grouped"),
    ("train.eval_mode=both", "train.eval_mode must be one of known, unknown"),
    ("optim.lr=fast", "optim.lr must be a number"),
    ("model.img_size=0", "model.img_size must be at least 1"),
    ("data.crop_pct=0", r"data.crop_pct must be in \(0, 1\]"),  # was "float division by zero" per image
    ("data.crop_pct=1.5", r"data.crop_pct must be in \(0, 1\]"),  # a crop past the image: black borders
    ("aug.gray_p=1.5", r"aug.gray_p must be in \[0, 1\]"),
    ("data.randaug_p=-0.1", r"data.randaug_p must be in \[0, 1\]"),
    # each of these used to reach torch as a traceback mid-run, or train silently wrong
    ("data.randaug_magnitude=50", r"data.randaug_magnitude must be in \[0, 30\]"),  # IndexError in RandAugment
    ("data.randaug_ops=-1", "data.randaug_ops must be at least 0"),
    ("model.drop_path=5", r"model.drop_path must be in \[0, 1\)"),
    ("optim.label_smoothing=1.5", r"optim.label_smoothing must be in \[0, 1\)"),
    ("optim.weight_decay=-1", "optim.weight_decay must be at least 0"),
    ("optim.grad_clip=-1", "optim.grad_clip must be at least 0"),  # a negative clip reverses the gradient
    ("train.ema_decay=2", r"train.ema_decay must be in \[0, 1\)"),  # was accepted: an EMA that diverges
    ("optim.lr=0", "optim.lr must be greater than 0"),
    ("moco.temperature=0", "moco.temperature must be greater than 0"),
    ("sched.warmup_epochs=-1", "sched.warmup_epochs must be at least 0"),
    ("model.head=cosine", "model.head must be one of linear"),  # was accepted and ignored
    ("semi.views=strongest", "semi.views must be one of randaug, mocov2"),
    ("semi.method=fixmach", "semi.method must be one of off, fixmatch"),  # was checked after config.yaml was written
    ("model.head_init=proto", "model.head_init must be one of random, probe, prototype"),
    ("aug.scale=[1.0,0.2]", r"aug.scale must be \[low, high\] with 0 < low <= high <= 1"),
    ("aug.scale=5", r"aug.scale must be \[low, high\]"),
    ("model.width=0", r"model.width must be in \(0, 4\]"),  # was read as 1.0 (`width or 1.0`)
    ("train.channels_last=maybe", "train.channels_last must be one of auto, true, false"),
    ("train.compile=1", "train.compile must be one of auto, true, false"),
    ("aug.jitter=[0.4,0.4,0.4,0.9]", r"aug.jitter must be \[brightness, contrast, saturation, hue\]"),
    # text and path fields were not checked: AttributeError / TypeError (exit 1) deep in the run
    ("model.name=", "model.name= gives no value, and model.name needs text"),
    ("model.name=123", "model.name must be text, not 123"),
    ("model.weights=123", "model.weights must be a path, not 123"),
    ("data.cache_dir=[a]", r"data.cache_dir must be a path, not \['a'\]"),
    ("data.datasets=[a,[b]]", r"data.datasets must be a name or a list of names, not \['a', \['b'\]\]"),
    ("data.unlabeled={a: 1}", "data.unlabeled must be a name or a list of names"),
    ("optim.fused=maybe", "optim.fused must be one of auto, on, off, not 'maybe'"),  # was accepted and meant auto
    ("train.epochs=1:30", "train.epochs must be a whole number, not '1:30'"),  # YAML 1.1 base 60: 90 epochs
    ("train.seed=99999999999999999999", r"train.seed must be in \[-9223372036854775808, 18446744073709551615\]"),  # torch.manual_seed overflowed: internal error
])
def test_wrong_types_and_ranges_are_refused_at_start_up(word, message):
    with pytest.raises(UserError, match=message):
        resolve(overrides=[word])


def test_values_of_the_right_kind_pass_and_integral_floats_become_ints(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 3.0\n")
    cfg = resolve(file=f, overrides=["optim.lr=1", "sched.warmup_epochs=2", "model.img_size=32", "optim.lr=1e-4"])
    assert cfg["train"]["epochs"] == 3 and isinstance(cfg["train"]["epochs"], int)
    assert cfg["optim"]["lr"] == 1e-4 and cfg["sched"]["warmup_epochs"] == 2 and cfg["model"]["img_size"] == 32


def test_numbers_in_exponent_form_in_a_config_file_are_numbers(tmp_path):
    """YAML 1.1 reads `lr: 1e-3` as the string '1e-3' (only `1.0e-3` is a float): it used to be refused."""
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 1e-3\n  weight_decay: 5E-2\ntrain:\n  epochs: 1e1\n")
    cfg = resolve(file=f)
    assert cfg["optim"]["lr"] == 1e-3 and cfg["optim"]["weight_decay"] == 5e-2
    assert cfg["train"]["epochs"] == 10 and isinstance(cfg["train"]["epochs"], int)
    for bad in ("lr: ten", "lr: nan", "lr: .inf"):
        f.write_text(f"optim:\n  {bad}\n")
        with pytest.raises(UserError, match="optim.lr must be a number"):
            resolve(file=f)


def test_an_empty_section_changes_nothing_and_a_section_that_is_not_one_is_named(tmp_path):
    """`optim:` with every field commented out, or `optim: 3`, failed later as "'NoneType' / 'int' object is not
    subscriptable" (exit 1)."""
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n#  lr: 0.1\ntrain:\n  epochs: 3\n")
    cfg = resolve(file=f)
    assert cfg["optim"] == resolve()["optim"] and cfg["train"]["epochs"] == 3
    for text in ("optim: 3\n", "train: [1]\n"):
        f.write_text(text)
        with pytest.raises(UserError, match="config section '(optim|train)' must hold fields"):
            resolve(file=f)


def test_moco_preset_as_a_field_chooses_the_preset_and_shuffle_bn_takes_its_choices(tmp_path):
    """`moco.preset=mocov1` changed the recorded name only (T stayed 0.2, the MLP on); `moco.shuffle_bn=maybe`
    was accepted and meant on."""
    v1 = resolve(overrides=["moco.preset=mocov1"], default_preset="mocov2")["moco"]
    assert v1["preset"] == "mocov1" and v1["temperature"] == 0.07 and v1["mlp"] is False
    f = tmp_path / "c.yaml"
    f.write_text("moco:\n  preset: mocov1\n  temperature: 0.1\n")
    from_file = resolve(file=f, default_preset="mocov2")["moco"]
    assert from_file["mlp"] is False and from_file["temperature"] == 0.1  # the file's own values still win
    assert resolve(default_preset="mocov2")["moco"]["temperature"] == 0.2
    assert resolve(file=f)["moco"]["mlp"] is True  # train has no presets: the field is only a record there
    with pytest.raises(UserError, match=re.escape(f"--preset mocov2 and the config file {f} (moco.preset: mocov1)")):
        resolve(preset="mocov2", file=f, default_preset="mocov2")
    for ok in ("auto", "true", "false", "off", "none"):
        resolve(overrides=[f"moco.shuffle_bn={ok}"])
    with pytest.raises(UserError, match="moco.shuffle_bn must be one of"):
        resolve(overrides=["moco.shuffle_bn=maybe"])


def test_a_preset_clash_names_where_the_other_preset_came_from(tmp_path):
    """`--preset mocov1` against a file's `moco: {preset: mocov2}` was reported as "moco.preset=mocov2", a
    key=value word the user never typed; a word that names it is still reported as the word."""
    f = tmp_path / "f.yaml"
    f.write_text("moco:\n  preset: mocov2\n")
    with pytest.raises(UserError) as caught:
        resolve(preset="mocov1", file=f, default_preset="mocov2")
    assert str(caught.value).startswith(f"--preset mocov1 and the config file {f} (moco.preset: mocov2) name "
                                        f"different presets; give one of them")
    with pytest.raises(UserError, match=r"^--preset mocov1 and moco.preset=mocov2 name different presets"):
        resolve(preset="mocov1", file=f, overrides=["moco.preset=mocov2"], default_preset="mocov2")
    # a word agreeing with --preset still leaves the file's v2 values over v1's: refused as the flag alone is
    with pytest.raises(UserError, match=r"^--preset mocov1 and the config file .* name different presets"):
        resolve(preset="mocov1", file=f, overrides=["moco.preset=mocov1"], default_preset="mocov2")


def test_text_fields_take_text_and_lists_of_names(tmp_path):
    cfg = resolve(overrides=["model.name=test_resnet", "data.datasets=[a, b]", "data.unlabeled=/x", "optim.fused=off",
                             "data.cache_dir=/tmp/c"])
    assert cfg["data"]["datasets"] == ["a", "b"] and cfg["optim"]["fused"] is False
    assert resolve(overrides=["data.datasets=a,b"])["data"]["datasets"] == "a,b"  # split by the layout scan
    # values that meant something before the fields were typed still do
    assert resolve(overrides=["data.datasets=[2019, b]"])["data"]["datasets"] == ["2019", "b"]  # a folder "2019"
    assert resolve(overrides=["data.datasets=2019"])["data"]["datasets"] == "2019"
    none = resolve(overrides=["model.weights=''", "data.cache_dir=false", "run.semi_method=none", "train.amp=false"])
    assert none["model"]["weights"] is None and none["data"]["cache_dir"] is None


def test_model_weights_is_recorded_absolute_with_home_expanded(tmp_path, monkeypatch):
    """model.weights was kept as typed while data.root was made absolute: a --resume from another folder naming
    the same file "changes model.weights", and `model.weights=~/x.pth` was not expanded (--weights ~/x.pth was)."""
    from fewshot.config import same_weights_file

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve(overrides=["model.weights=w/t.pth"])["model"]["weights"] == str(tmp_path / "w" / "t.pth")
    assert resolve(overrides=["model.weights=~/x.pth"])["model"]["weights"] == str(tmp_path / "home" / "x.pth")
    # a run recorded before: its relative path names the file given now from another folder, not another file
    assert same_weights_file("w/t.pth", "/home/u/w/t.pth") and same_weights_file("../w/t.pth", "/a/w/t.pth")
    assert not same_weights_file("w/t.pth", "/home/u/v/t.pth") and not same_weights_file("t.pth", "/a/s.pth")
    assert same_weights_file("/a/w/t.pth", "/a/x/../w/t.pth") and not same_weights_file("/a/w/t.pth", "/b/w/t.pth")


def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path):
    """PyYAML keeps the last of two `model:` sections: the file's model.name was dropped and resnet18 trained."""
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  name: test_resnet\nmodel:\n  img_size: 32\n")
    with pytest.raises(UserError, match="not valid YAML at line 3.*'model' is given twice"):
        resolve(file=f)
    f.write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(UserError, match="'lr' is given twice"):
        resolve(file=f)
    f.write_text("base: &b\n  lr: 0.1\n")  # a merge key's fields may be overridden: not a duplicate
    from fewshot.config import read_yaml

    assert read_yaml("a: &a {lr: 1, wd: 2}\nb:\n  <<: *a\n  lr: 3\n")["b"] == {"lr": 3, "wd": 2}


def test_a_control_character_in_a_config_file_is_named_as_such(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_bytes("# caf\u00e9 \x1b\ntrain:\n  epochs: 3\n".encode())
    with pytest.raises(UserError, match="control character U\\+001B"):
        resolve(file=f)


def test_a_pretrain_runs_saved_config_is_a_valid_config_file(tmp_path):
    """pretrain records `_task: moco` in config.yaml; `--config RUN/config.yaml` refused it as an unknown field."""
    from fewshot.config import save_yaml

    cfg = resolve(overrides=["train.epochs=7"], default_preset="mocov1")
    cfg["_task"] = "moco"
    save_yaml(cfg, tmp_path / "config.yaml")
    again = resolve(file=tmp_path / "config.yaml", default_preset="mocov2")
    assert again["train"]["epochs"] == 7 and again["moco"]["preset"] == "mocov1" and "_task" not in again


def test_a_yaml_syntax_error_is_one_paragraph_with_its_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.1\n   momentum: [0.9\n")
    with pytest.raises(UserError) as info:
        resolve(file=f)
    message = str(info.value)
    assert "\n" not in message and f"config file {f} is not valid YAML at line 3" in message


def test_amp_off_from_yaml_turns_autocast_off():
    """YAML 1.1 reads a bare `off` as false: `train.amp=off` must still mean off (it used to be refused)."""
    import torch

    from fewshot.train.engine import amp_dtype

    cfg = resolve(overrides=["train.amp=off"])
    assert cfg["train"]["amp"] is False
    assert amp_dtype(cfg, torch.device("cuda")) is None and amp_dtype(cfg, torch.device("cpu")) is None
    assert amp_dtype(resolve(overrides=["train.amp=bf16"]), torch.device("cuda")) == torch.bfloat16


def test_amp_auto_uses_bf16_on_a_cpu_only_where_it_is_native_and_the_images_are_large(monkeypatch):
    """`train.amp=auto`: bf16 on CUDA; on a CPU only with native bf16 and images >= CPU_BF16_MIN_SIZE px, or
    half that with the small stem (a 64 px MoCo step ran 1.4x faster, 32 px gained nothing, 32 px with the
    small stem 1.4-1.6x; emulated bf16 is slower than fp32)."""
    import torch

    from fewshot.runtime import CPU_BF16_MIN_SIZE
    from fewshot.train.engine import amp_dtype

    cfg, cpu, cuda = resolve(), torch.device("cpu"), torch.device("cuda")
    assert cfg["train"]["amp"] == "auto" and CPU_BF16_MIN_SIZE == 48
    monkeypatch.setenv("FEWSHOT_CPU_BF16", "1")
    assert amp_dtype(cfg, cpu, 64) == torch.bfloat16 and amp_dtype(cfg, cpu, 48) == torch.bfloat16
    assert amp_dtype(cfg, cpu, 47) is None and amp_dtype(cfg, cpu, 32) is None and amp_dtype(cfg, cpu) is None
    assert amp_dtype(resolve(overrides=["train.amp=off"]), cpu, 224) is None  # an explicit choice wins
    small = resolve(overrides=["model.small_stem=true"])  # stride-1 stem: a 32 px input has 64 px-sized maps
    assert amp_dtype(small, cpu, 32) == torch.bfloat16 and amp_dtype(small, cpu, 16) is None
    monkeypatch.setenv("FEWSHOT_CPU_BF16", "0")
    assert amp_dtype(cfg, cpu, 224) is None
    assert amp_dtype(cfg, cuda, 32) == torch.bfloat16  # on CUDA regardless of the size or the CPU
    assert amp_dtype(resolve(overrides=["train.amp=bf16"]), cpu, 32) == torch.bfloat16


def test_native_bf16_detection_follows_the_cpu_flags_and_a_measurement_unless_overridden(monkeypatch):
    import torch

    from fewshot import runtime
    from fewshot.runtime import cpu_computes_bf16

    monkeypatch.delenv("FEWSHOT_CPU_BF16", raising=False)
    probes = []
    monkeypatch.setattr(runtime, "bf16_conv_speedup", lambda: probes.append(1) or speedup)
    flags = {"avx512_bf16": False, "amx": False}
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: flags["avx512_bf16"])
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: flags["amx"])
    vendor = {"name": "GenuineIntel"}
    monkeypatch.setattr(runtime, "cpu_vendor", lambda: vendor["name"])
    speedup = 3.0
    assert not cpu_computes_bf16() and not probes  # emulated bf16: fp32, nothing measured
    flags["amx"] = True
    assert cpu_computes_bf16() and not probes  # AMX (Intel) always pays
    flags.update(amx=False, avx512_bf16=True)
    assert cpu_computes_bf16() and len(probes) == 1  # AVX512-BF16 alone on an Intel CPU: measured, faster
    vendor["name"] = "AuthenticAMD"
    speedup = 0.5
    assert cpu_computes_bf16() and len(probes) == 1  # AMD Zen 4: measured 1.4-1.6x per step once, no probe
    vendor["name"] = None  # unknown vendor (no /proc/cpuinfo): measured
    assert not cpu_computes_bf16() and len(probes) == 2  # Intel without AMX (or hidden by a hypervisor): slower
    speedup = runtime.BF16_MIN_SPEEDUP - 0.01
    assert not cpu_computes_bf16()  # a gain within the probe's noise is no reason to change the numerics
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert not cpu_computes_bf16()  # a torch without the helpers: fp32, never an error
    for value, expected in (("1", True), ("yes", True), ("0", False), ("off", False)):
        monkeypatch.setenv("FEWSHOT_CPU_BF16", value)
        assert cpu_computes_bf16() is expected
    monkeypatch.setenv("FEWSHOT_CPU_BF16", "typo_0")  # used to count as "on": anything but 0/false/no/off did
    with pytest.raises(UserError, match="FEWSHOT_CPU_BF16='typo_0'"):
        cpu_computes_bf16()


def test_the_bf16_probe_times_a_real_convolution_and_leaves_grad_mode_alone():
    import torch

    from fewshot.runtime import bf16_conv_speedup

    torch.manual_seed(0)
    ratio = bf16_conv_speedup.__wrapped__(reps=1)  # uncached: a real measurement on this CPU
    assert 0.01 < ratio < 100
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))  # the global RNG did not move: seeded runs do not depend on the CPU
    assert torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
    with torch.no_grad():  # a caller inside no_grad or inference_mode still gets a measurement
        assert bf16_conv_speedup.__wrapped__(reps=1) > 0.01
        assert not torch.is_grad_enabled()
    with torch.inference_mode():
        assert bf16_conv_speedup.__wrapped__(reps=1) > 0.01


def test_the_small_image_moco_config_keeps_a_2x2_last_stage_and_32_samples_per_bn_group():
    """configs/moco_cpu_small.yaml is the measured short-schedule recipe (docs/recipes.md): its network
    must keep the last stage at 2x2 for 32 px images, and each shuffle-BN group must hold 32 samples."""
    import torch

    from fewshot.models.backbone import backbone_options, create_backbone
    from fewshot.ssl.pretrain_settings import split_groups

    cfg = resolve(preset="mocov2", file=Path(__file__).parent.parent / "configs" / "moco_cpu_small.yaml")
    size = cfg["model"]["img_size"]
    net = create_backbone(cfg["model"]["name"], **{**backbone_options(cfg["model"]), "img_size": None}).eval()
    with torch.no_grad():
        last = net.forward_features(torch.zeros(2, 3, size, size))
    assert size == 32 and last.shape[-2:] == (2, 2)
    assert cfg["train"]["batch_size"] // split_groups(cfg, world=1) == 32
    assert cfg["optim"]["lr"] == 0.06 and cfg["moco"]["momentum"] == 0.99


@pytest.mark.parametrize("lr", [1e-6, 1e-3])
def test_the_schedule_never_climbs_above_a_learning_rate_below_its_floor(lr):
    """sched.min_lr (1e-5) and warmup_lr are floors for usual rates: with --lr 1e-6 the cosine used to climb
    from 1e-6 to 1e-5. The peak is the given lr either way, and the schedule ends at min(min_lr, lr)."""
    import torch

    from fewshot.config import resolve
    from fewshot.train.engine import build_scheduler

    cfg = resolve(overrides=[f"optim.lr={lr}", "train.epochs=4", "sched.warmup_epochs=1"])
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_scheduler(cfg, opt, steps_per_epoch=5)
    lrs = []
    for step in range(21):
        sched.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    assert max(lrs) <= lr * (1 + 1e-9)
    assert lrs[-1] == pytest.approx(min(cfg["sched"]["min_lr"], lr), rel=1e-6)


def test_a_relative_cache_folder_is_recorded_absolute(tmp_path, monkeypatch):
    """`data.cache_dir=mycache` was saved as given: --resume from another folder decoded everything again there."""
    monkeypatch.chdir(tmp_path)
    assert resolve(overrides=["data.cache_dir=mycache"])["data"]["cache_dir"] == str(tmp_path / "mycache")


def test_the_data_root_is_recorded_absolute(tmp_path, monkeypatch):
    """A relative data.root in config.yaml was looked up from wherever `fewshot report` or --resume ran later,
    and could name another folder (or the wrong dataset of the same name) without a word."""
    monkeypatch.chdir(tmp_path)
    cfg = resolve(flags={"data.root": "data"})
    assert cfg["data"]["root"] == str(tmp_path / "data")


def test_a_relative_unlabeled_folder_is_recorded_absolute_and_an_older_relative_record_still_resumes(tmp_path,
                                                                                                     monkeypatch):
    """`--unlabeled pool` was saved as typed: --resume from another folder found no ./pool, and giving the pool's
    absolute path instead was refused as a change of data.unlabeled."""
    import os

    from fewshot.config import save_yaml
    from fewshot.run_state import RunState
    from fewshot.train.resume_config import merge_resume_config

    monkeypatch.chdir(tmp_path)
    pool = str(tmp_path / "pool")
    assert resolve(flags={"data.unlabeled": ["pool", "~/more"]})["data"]["unlabeled"] == [
        pool, os.path.expanduser("~/more")]
    assert resolve(overrides=["data.unlabeled=pool"])["data"]["unlabeled"] == pool
    old = resolve()
    old["data"]["unlabeled"] = ["pool"]  # what a run started before this fix recorded
    (tmp_path / "run").mkdir()
    save_yaml(old, tmp_path / "run" / "config.yaml")
    now = resolve(flags={"data.unlabeled": [pool]})
    assert merge_resume_config(tmp_path / "run", now, {"data.unlabeled": [pool]})["data"]["unlabeled"] == [pool]
    with pytest.raises(UserError, match="changes data.unlabeled"):
        merge_resume_config(tmp_path / "run", now, {"data.unlabeled": [str(tmp_path / "other")]})
    RunState.start(tmp_path / "pipeline", old, 1.0, 32, 0.0)
    RunState.resume(tmp_path / "pipeline", now, None)
    with pytest.raises(UserError, match="changes data.unlabeled"):
        RunState.resume(tmp_path / "pipeline", resolve(flags={"data.unlabeled": [str(tmp_path / "x" / "p")]}), None)


@pytest.mark.parametrize("how", ["file", "word"])
def test_brackets_nested_hundreds_deep_are_a_user_error(tmp_path, how):
    """`epochs: [[[...]]]` 500 deep overflowed the stack in PyYAML (RecursionError, an internal error)."""
    for depth in (40, 500, 5000):
        value = "[" * depth + "]" * depth
        if how == "file":
            f = tmp_path / "c.yaml"
            f.write_text(f"train:\n  epochs: {value}\n")
            with pytest.raises(UserError, match=f"config file {f} nests values more than 32 levels deep"):
                resolve(file=f)
        else:
            with pytest.raises(UserError, match="the value of train.epochs= nests values more than 32 levels"):
                resolve(overrides=[f"train.epochs={value}"])
    assert resolve(overrides=["aug.scale=[0.3, 1]"])["aug"]["scale"] == [0.3, 1]


def test_numbers_with_leading_zeros_are_decimal_and_names_stay_as_typed(tmp_path):
    """YAML 1.1 reads 040 as the octal 32 (while 09 is 9), and `data.datasets=01` named a dataset '1'."""
    cfg = resolve(overrides=["model.img_size=040", "train.seed=-010", "train.epochs=09"])
    assert cfg["model"]["img_size"] == 40 and cfg["train"]["seed"] == -10 and cfg["train"]["epochs"] == 9
    assert resolve(overrides=["data.datasets=01"])["data"]["datasets"] == "01"
    assert resolve(overrides=["data.datasets=08"])["data"]["datasets"] == "08"  # was the float 8.0: refused
    assert resolve(overrides=["data.datasets=[01, 08, 2019]"])["data"]["datasets"] == ["01", "08", "2019"]
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  img_size: 040\ndata:\n  datasets: [01, 02]\n")
    cfg = resolve(file=f)
    assert cfg["model"]["img_size"] == 40 and cfg["data"]["datasets"] == ["01", "02"]
    assert resolve(overrides=["model.img_size=0x20", "train.seed=0"])["model"]["img_size"] == 32  # said so


def test_a_config_folder_is_named_as_a_folder(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "mine.yaml").write_text("train:\n  epochs: 3\n")
    with pytest.raises(UserError, match="is a folder; give a YAML file .*mine.yaml"):
        resolve(file=tmp_path / "recipes")


def test_an_older_runs_relative_path_matches_by_its_tail_and_says_what_was_taken(capsys):
    """Review 2: a recorded bare `pool` matches any folder named pool: accepted (older runs kept paths as typed),
    but a note names the folder taken; another name is refused; URLs for model.weights are left as typed."""
    from fewshot.config import resolve, same_folders, same_weights_file

    assert same_folders(["pool"], ["/x/other/pool"]) and not same_folders(["pool"], ["/x/pools"])
    assert "note: the run recorded pool relative to a folder it did not record" in capsys.readouterr().err
    assert same_weights_file("/a/w.pt", "/a/w.pt") and not same_weights_file("/a/w.pt", "/b/w.pt")
    assert resolve(flags={"model.weights": "https://x.org/w.pth"})["model"]["weights"] == "https://x.org/w.pth"


def test_a_local_config_named_without_yaml_wins_over_the_shipped_recipe(tmp_path, monkeypatch):
    """`--config cpu_tiny` beside ./cpu_tiny.yaml took the shipped recipe; `--config myexp` was "not found"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cpu_tiny.yaml").write_text("train:\n  epochs: 7\n")
    (tmp_path / "myexp.yml").write_text("train:\n  epochs: 3\n")
    assert resolve(file="cpu_tiny")["train"]["epochs"] == 7
    assert resolve(file="myexp")["train"]["epochs"] == 3
    assert resolve(file="moco_cpu_small")["moco"] is not None  # a shipped recipe by name still works


@pytest.mark.parametrize("word, needs", [("optim.lr=", "a number"), ("optim.lr= ", "a number"),
                                         ("train.epochs=", "a whole number"), ("train.batch_size=", "a whole number"),
                                         ("train.threads=", "a whole number"), ("aug.scale=", "a list of 2 numbers")])
def test_an_empty_value_for_a_number_is_refused_naming_the_key(word, needs):
    """`optim.lr=` (an empty shell variable) read as null, which for lr means "chosen at run time": a run at the
    default rate the user thought they had set."""
    key = word.split("=")[0]
    with pytest.raises(UserError, match=f"{re.escape(key)}= gives no value, and {re.escape(key)} needs {needs}"):
        resolve(overrides=[word])


def test_an_empty_lr_is_exit_2_and_null_still_means_chosen_at_run_time(tmp_path):
    from helpers.checks import run_main

    rc, _, err = run_main("train", "--data", tmp_path, "--out", tmp_path / "r", "optim.lr=")
    assert rc == 2 and "optim.lr= gives no value" in err and "optim.lr=null" in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()
    assert resolve(overrides=["optim.lr=null", "train.threads=~", "train.budget_minutes=null"])["optim"]["lr"] is None
    # paths and names still read an empty value as none (no weights, every dataset, the default cache)
    cfg = resolve(overrides=["model.weights=", "data.datasets=", "data.cache_dir="])
    assert cfg["model"]["weights"] is None and cfg["data"]["datasets"] is None
