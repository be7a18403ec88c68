"""Config words against a --config file and memory checks: a preset named by a word, moco.mlp_hidden's memory,
empty values, and the words `fewshot pretrain` and `fewshot train` never read."""

from __future__ import annotations

import pytest

from fewshot.config import resolve, save_yaml
from fewshot.errors import UserError


def test_a_preset_word_against_a_run_config_is_refused_as_the_flag_is(tmp_path):
    """`moco.preset=mocov1` with a run's config.yaml (every field, v2's) renamed the preset only and trained with
    T 0.2, the MLP and cosine; `--preset mocov1` with the same file was refused. The word is refused alike."""
    f = tmp_path / "config.yaml"
    save_yaml(resolve(default_preset="mocov2"), f)  # as a pretrain run writes it: every field
    with pytest.raises(UserError) as flag:
        resolve(preset="mocov1", file=f, default_preset="mocov2")
    with pytest.raises(UserError) as word:
        resolve(file=f, overrides=["moco.preset=mocov1"], default_preset="mocov2")
    assert str(word.value).startswith(f"moco.preset=mocov1 and the config file {f} (moco.preset: mocov2) name "
                                      f"different presets; give one of them")
    assert "different presets" in str(flag.value) and "moco.temperature" in str(word.value)
    # the same preset, or a word over a file naming none, still go on: the word's preset under the file's fields
    assert resolve(file=f, overrides=["moco.preset=mocov2"], default_preset="mocov2")["moco"]["temperature"] == 0.2
    plain = tmp_path / "plain.yaml"
    plain.write_text("train:\n  epochs: 3\n")
    v1 = resolve(file=plain, overrides=["moco.preset=mocov1"], default_preset="mocov2")
    assert (v1["moco"]["temperature"], v1["moco"]["mlp"], v1["train"]["epochs"]) == (0.07, False, 3)


def test_a_huge_mlp_hidden_is_named_not_the_queue(monkeypatch):
    """`moco.mlp_hidden=100000000` was refused as "--queue-size 64: ... Give a smaller queue" (about 4 million keys
    said to fit): the field too big is the head's width."""
    import fewshot.config as config

    monkeypatch.setattr(config.memory, "memory_bytes", lambda: 16 * 2**30)
    for words in (["moco.queue_size=64", "moco.mlp_hidden=100000000"],
                  ["moco.queue_size=100000000", "moco.mlp_hidden=100000000"]):  # both too big: no queue fits it
        with pytest.raises(config.FieldError) as caught:
            resolve(overrides=words)
        assert caught.value.field == "moco.mlp_hidden" and "moco.mlp_hidden 100000000" in str(caught.value)
        assert "queue" not in str(caught.value)
    resolve(overrides=["moco.queue_size=64", "moco.mlp_hidden=100000000", "moco.mlp=false"])  # no hidden layer
    resolve(overrides=["moco.mlp_hidden=4096"])
    with pytest.raises(config.FieldError) as caught:  # the queue alone is still the queue's fault
        resolve(overrides=["moco.queue_size=10000000000", "moco.mlp_hidden=4096"])
    assert caught.value.field == "moco.queue_size"


@pytest.mark.parametrize("word, needs", [
    ("data.bit_depth=", "auto or a whole number from 8 to 16"),  # was "must be auto or ..., not None"
    ("train.ema= ", "true or false"),
    ("model.name=", "text"),
    # each choice once, without YAML's aliases
    ("train.amp=", "one of auto, bf16, fp16, off."),  # was read as off (AMP quietly off); "..., off, false"
    ("semi.method=", "one of off, fixmatch, moco."),  # was "off, fixmatch, moco, false"
    ("optim.fused=", "one of auto, on, off."),  # was "auto, true, false, on, off"
    ("run.semi_method=", "one of pseudo, fixmatch, off."),
    ("moco.shuffle_bn=", "one of auto, true, off."),
])
def test_an_empty_value_is_refused_naming_the_key(word, needs):
    """An empty value (an unset shell variable) is refused with what the field takes, not read as none, each
    choice listed once."""
    key = word.split("=")[0]
    with pytest.raises(UserError) as caught:
        resolve(overrides=[word])
    assert str(caught.value).startswith(f"{key}= gives no value, and {key} needs {needs}")
    assert "None" not in str(caught.value)


def test_an_empty_path_or_name_list_still_means_none():
    """The fields whose none is documented keep it: no weights, every dataset, the default pool and cache."""
    cfg = resolve(overrides=["model.weights=", "data.datasets=", "data.unlabeled=", "data.cache_dir="])
    assert (cfg["model"]["weights"], cfg["data"]["datasets"], cfg["data"]["unlabeled"]) == (None, None, None)
    assert cfg["data"]["cache_dir"] is None


@pytest.mark.parametrize("word", ["optim.name=", "model.name=", "train.epochs=", "data.bit_depth=", "optim.lr="])
def test_an_empty_value_names_no_default_that_may_be_wrong(word):
    """`fewshot pretrain optim.name=` said "Drop the word to keep the default (optim.name=adamw)" where the preset
    gives sgd (a --config file, or probe's recorded data.bit_depth, the same): dropping it keeps the layered value."""
    key = word.split("=")[0]
    with pytest.raises(UserError) as caught:
        resolve(overrides=[word], default_preset="mocov2")
    said = str(caught.value)
    assert "the default (" not in said and f"keep the default ({key}" not in said, said
    assert "Drop the word to keep the value the command uses without it (a --config file's, a preset's" in said
    if key == "optim.lr":  # null still named for what it means
        assert "or give optim.lr=null for the rate the command chooses at run time" in said


@pytest.mark.parametrize("word, words", [
    ("semi.method=fixmach", "semi.method must be one of off, fixmatch, moco, not 'fixmach'."),
    ("train.amp=fp8", "train.amp must be one of auto, bf16, fp16, off, not 'fp8'."),
    ("optim.fused=maybe", "optim.fused must be one of auto, on, off, not 'maybe'."),
    ("data.bit_depth=7", "data.bit_depth must be auto or a whole number from 8 to 16 (the bits 16-bit images use"),
])
def test_a_wrong_word_is_refused_with_the_same_choice_words(word, words):
    from fewshot.config import field_words

    key = word.split("=")[0]
    with pytest.raises(UserError) as caught:
        resolve(overrides=[word])
    assert str(caught.value).startswith(words), caught.value
    assert f"must be {field_words(key)}, not" in str(caught.value)  # one wording for both messages
    with pytest.raises(UserError) as empty:
        resolve(overrides=[f"{key}="])
    assert f"needs {field_words(key)}. Give" in str(empty.value)


def test_moco_memory_counts_the_heads_first_layer(monkeypatch):
    """The estimate left out the head's backbone width x hidden layer: moco.mlp_hidden=2000000 on resnet50 was
    estimated at about 4 GiB (it takes about 60: 2048 x 2000000 weights in 4 copies) and let through."""
    import fewshot.config as config

    hidden = 2_000_000
    first_layer = 4 * 4 * config.HEAD_WIDTH_GUESS * hidden  # floats, in 4 copies (weights, gradients, state, key)
    assert config.moco_bytes(65536, 128, 256, hidden) > first_layer > 50 * 2**30
    assert config.moco_bytes(65536, 128, 256, hidden, mlp=False) == config.moco_bytes(65536, 128, 256, None, False)
    monkeypatch.setattr(config.memory, "memory_bytes", lambda: 32 * 2**30)
    with pytest.raises(config.FieldError) as caught:
        resolve(overrides=[f"moco.mlp_hidden={hidden}"], default_preset="mocov2")
    assert caught.value.field == "moco.mlp_hidden" and f"moco.mlp_hidden {hidden}" in str(caught.value)
    resolve(overrides=[f"moco.mlp_hidden={hidden}", "moco.mlp=false"], default_preset="mocov2")  # no hidden layer
    resolve(overrides=["moco.mlp_hidden=4096"], default_preset="mocov2")
