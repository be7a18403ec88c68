"""Output encodings and odd names: a stdout that cannot encode non-ASCII text (a Latin-1 locale, Windows output
redirected to a file), run folders whose names are not valid UTF-8, and the names shown in messages."""

from __future__ import annotations

import html
import io
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fewshot import process_state
from fewshot.errors import UserError, one_line, printable, quoted, shell_quoted, undecodable_escaped
from helpers.checks import run_main
from helpers.tiny import build_digits

COMMON = ["--model", "test_resnet", "--img-size", "16", "--batch-size", "8", "--device", "cpu", "--no-progress",
          "train.tensorboard=false", "train.threads=1"]
UNDECODABLE = os.fsdecode(b"o\xff")  # what Python makes of a folder named with the byte 0xff: "o\udcff"


def run_ascii(*argv, cwd: Path) -> subprocess.CompletedProcess:
    """`fewshot ARGV` with stdout and stderr that encode ASCII only, strictly (as cp1252 or Latin-1 do, for
    fewer characters)."""
    env = {**os.environ, "PYTHONIOENCODING": "ascii:strict"}
    return subprocess.run([sys.executable, "-m", "fewshot", *map(str, argv)], capture_output=True, timeout=300,
                          cwd=cwd, env=env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A data root, a dataset and a fine-tuning run named with é and 中文, and a MoCo run beside them."""
    base = tmp_path_factory.mktemp("encodings")
    root = build_digits(base / "root é中文", shots=2)
    (root / "digits").rename(root / "digits é中文")
    (root / "unlabeled" / "digits").rename(root / "unlabeled" / "digits é中文")
    ft, moco = base / "runs" / "out é 中文", base / "runs" / "moco"
    rc, _, err = run_main("train", "--data", root, "--out", ft, "--epochs", "1", *COMMON)
    assert rc == 0, err
    rc, _, err = run_main("pretrain", "--data", root, "--out", moco, "--epochs", "1", "--queue-size", "32",
                          "moco.split_bn_groups=2", "moco.knn_k=5", *COMMON)
    assert rc == 0, err
    return SimpleNamespace(base=base, root=root, ft=ft, moco=moco)


def test_compare_prints_its_tables_dashes_escaped_on_an_ascii_stdout(runs):
    """The tables' "–" in empty cells ended `fewshot compare` in a traceback and "internal error" (exit 1)."""
    proc = run_ascii("compare", "runs/moco", "runs/out é 中文", cwd=runs.base)
    out, err = proc.stdout.decode("ascii"), proc.stderr.decode("ascii")
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "internal error" not in err
    assert "\\u2013" in out  # DASH, escaped
    assert "out \\xe9 \\u4e2d\\u6587" in out  # the run's label


def test_eval_prints_paths_and_dataset_names_escaped_on_an_ascii_stdout(runs):
    """eval's announcement and table name the checkpoint's path and the dataset: `é`, `中文` crashed it after the
    evaluation; its progress lines are written too."""
    proc = run_ascii("eval", "runs/out é 中文", "--data", runs.root, "--device", "cpu", cwd=runs.base)
    out, err = proc.stdout.decode("ascii"), proc.stderr.decode("ascii")
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "internal error" not in err
    assert "runs/out \\xe9 \\u4e2d\\u6587/checkpoints/best.pt" in out
    assert "digits \\xe9\\u4e2d\\u6587" in out


class Strict(io.TextIOWrapper):
    """A stream that encodes ASCII only and fails on anything else, as a redirected Windows console does."""

    def __init__(self):
        super().__init__(io.BytesIO(), encoding="ascii", errors="strict", write_through=True)

    def text(self) -> str:
        return self.buffer.getvalue().decode("ascii")


def test_an_in_process_call_writes_escaped_and_gives_the_streams_back_as_they_were(monkeypatch, tmp_path):
    """main() from Python: the command's message is written escaped, and the caller's streams fail again as before
    on what they cannot encode (the setting is the caller's)."""
    out, err = Strict(), Strict()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    from fewshot.cli import main

    assert main(["compare", str(tmp_path / "nowhere é")]) == 2
    assert "nowhere \\xe9" in err.text()
    assert (out.errors, err.errors) == ("strict", "strict")
    with pytest.raises(UnicodeEncodeError):
        print("é", file=err)


def test_escaped_output_keeps_a_stream_escaped_until_the_last_call_that_escaped_it_returns(monkeypatch):
    """Calls from two threads overlapping in escaped_output (before their turn): the first to return put the
    stream back to strict while the second still wrote."""
    stream = Strict()
    monkeypatch.setattr(sys, "stdout", stream)
    monkeypatch.setattr(sys, "stderr", stream)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    written = []

    def first():
        with process_state.escaped_output():
            first_in.set()
            second_in.wait(30)
        first_out.set()

    def second():
        first_in.wait(30)
        with process_state.escaped_output():
            second_in.set()
            first_out.wait(30)
            print("é", file=stream)
            written.append(True)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert written and stream.text() == "\\xe9\n"
    assert stream.errors == "strict"


def test_escaped_output_leaves_a_stream_without_reconfigure_and_one_that_writes_anything(monkeypatch):
    """A notebook's stream has no reconfigure; a UTF-8 stream under surrogateescape (the C locale) writes every
    character, a name's bytes as those bytes: both are left as they are."""
    notebook = io.StringIO()
    c_locale = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="surrogateescape", write_through=True)
    monkeypatch.setattr(sys, "stdout", notebook)
    monkeypatch.setattr(sys, "stderr", c_locale)
    with process_state.escaped_output():
        print("é", file=notebook)
        print(UNDECODABLE, file=c_locale)
    assert notebook.getvalue() == "é\n"
    assert c_locale.buffer.getvalue() == b"o\xff\n"


@pytest.mark.parametrize("encoding, errors, written", [
    ("ascii", "strict", b"o\\xff \\xe9 \\u4e2d\n"),  # the byte as errors.undecodable_escaped shows it
    ("latin-1", "surrogateescape", b"o\xff \xe9 \\u4e2d\n"),  # the byte itself, as the stream wrote it before
    ("utf-8", "strict", b"o\\xff \xc3\xa9 \xe4\xb8\xad\n"),
    ("utf-16", "surrogateescape", "o\\xff é 中\n".encode("utf-16")),  # one raw byte is half a character: failed
    ("utf-32", "surrogateescape", "o\\xff é 中\n".encode("utf-32")),
])
def test_escaped_output_writes_a_name_not_in_utf8_with_its_bytes(monkeypatch, encoding, errors, written):
    """backslashreplace wrote the byte 0xff of a folder's name as `\\udcff`, no byte of the name, and on a
    Latin-1 stream under surrogateescape (PYTHONIOENCODING=latin-1:surrogateescape) no longer as the byte."""
    stream = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors=errors, write_through=True)
    monkeypatch.setattr(sys, "stdout", stream)
    monkeypatch.setattr(sys, "stderr", stream)
    with process_state.escaped_output():
        print(f"{UNDECODABLE} é 中", file=stream)
    assert stream.buffer.getvalue() == written
    assert stream.errors == errors


class Failing(Strict):
    """A stream of the caller's own whose reconfigure fails in its own way (taken as "cannot be reconfigured")."""

    def reconfigure(self, **kwargs):
        raise RuntimeError("no")


def test_a_stream_that_fails_to_reconfigure_leaves_the_other_one_as_it_was(monkeypatch):
    """stdout, escaped first, stayed escaped for good when stderr's reconfigure raised something unforeseen: stderr
    is left as it is, and stdout written escaped and put back."""
    out, err = Strict(), Failing()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    with process_state.escaped_output():
        print("é", file=out)
    assert out.text() == "\\xe9\n"
    assert out.errors == "strict" and not process_state._escaped


class Interrupted(Strict):
    """A stream whose reconfigure is interrupted (Ctrl-C in its flush into a full pipe) at the given calls: 1 when
    escaped, 2 when put back."""

    def __init__(self, at: set[int]):
        super().__init__()
        self.at, self.calls = at, 0

    def reconfigure(self, **kwargs):
        self.calls += 1
        if self.calls in self.at:
            raise KeyboardInterrupt
        super().reconfigure(**kwargs)


def test_an_interrupt_while_escaping_puts_back_the_streams_escaped_so_far(monkeypatch):
    """Ctrl-C in stderr's reconfigure, after stdout was escaped: stdout must not stay escaped for good."""
    out, err = Strict(), Interrupted({1})
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    with pytest.raises(KeyboardInterrupt):
        with process_state.escaped_output():
            pytest.fail("the body ran after the interrupt")
    assert (out.errors, err.errors) == ("strict", "strict") and not process_state._escaped


def test_an_interrupt_while_putting_one_stream_back_puts_back_the_others(monkeypatch):
    """Ctrl-C while stdout was put back stopped the loop: stderr kept this call's count and stayed escaped for good."""
    out, err = Interrupted({2}), Strict()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    with pytest.raises(KeyboardInterrupt):
        with process_state.escaped_output():
            print("é", file=out)
            print("é", file=err)
    assert (out.text(), err.text()) == ("\\xe9\n", "\\xe9\n")
    assert err.errors == "strict" and not process_state._escaped
    with pytest.raises(UnicodeEncodeError):
        print("é", file=err)


class DropInterrupted(dict):
    """process_state._escaped whose first removal is interrupted (Ctrl-C)."""

    def __delitem__(self, key):
        if not getattr(self, "interrupted", False):
            self.interrupted = True
            raise KeyboardInterrupt
        super().__delitem__(key)


def test_an_interrupt_while_a_record_is_dropped_holds_up_no_later_call(monkeypatch):
    """Ctrl-C between marking a stream's record given up and removing it: every later call on the stream looked
    the record up again for ever."""
    stream = Strict()
    monkeypatch.setattr(sys, "stdout", stream)
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(process_state, "_escaped", DropInterrupted())
    with pytest.raises(KeyboardInterrupt):
        with process_state.escaped_output():
            pass
    assert stream.errors == "strict"

    def later():
        with process_state.escaped_output():
            print("é", file=stream)

    call = threading.Thread(target=later, daemon=True)
    call.start()
    call.join(30)
    assert not call.is_alive() and stream.text() == "\\xe9\n"
    assert stream.errors == "strict" and not process_state._escaped


class Blocking(Strict):
    """A stream whose flush waits (stdout into a full pipe) until `go` is set."""

    def __init__(self):
        super().__init__()
        self.flushing, self.go = threading.Event(), threading.Event()

    def flush(self):
        self.flushing.set()
        self.go.wait(30)
        super().flush()


def test_a_stream_whose_flush_blocks_holds_up_no_other_stream(monkeypatch):
    """reconfigure flushes: blocked in it while holding the lock of every stream, it held up the calls that escape
    other streams too."""
    blocked, other, done = Blocking(), Strict(), threading.Event()
    monkeypatch.setattr(sys, "stdout", blocked)
    monkeypatch.setattr(sys, "stderr", blocked)

    def first():
        with process_state.escaped_output():
            done.wait(30)

    def second():
        with process_state.escaped_output():
            print("é", file=other)

    one, two = threading.Thread(target=first), threading.Thread(target=second)
    one.start()
    try:
        assert blocked.flushing.wait(30)
        monkeypatch.setattr(sys, "stdout", other)
        monkeypatch.setattr(sys, "stderr", other)
        two.start()
        two.join(10)
        assert not two.is_alive() and other.text() == "\\xe9\n"
    finally:
        blocked.go.set()
        done.set()
        one.join(30)
        two.join(30)
    assert (blocked.errors, other.errors) == ("strict", "strict") and not process_state._escaped


def test_a_call_that_waited_its_turn_escapes_the_stream_the_caller_gave_meanwhile(monkeypatch, tmp_path):
    """A call waiting for another took the streams as they were when it was made: stderr swapped meanwhile
    (redirect_stderr in a notebook) was never escaped, and the command failed on its message."""
    from fewshot import cli

    before, after = Strict(), Strict()
    monkeypatch.setattr(sys, "stdout", before)
    monkeypatch.setattr(sys, "stderr", before)
    codes = []
    call = threading.Thread(target=lambda: codes.append(cli.main(["compare", str(tmp_path / "nowhere é")])))
    with cli._TURN.taken("train"):
        call.start()
        for _ in range(300):
            if "this one waits" in before.text():
                break
            call.join(0.1)
        assert "this one waits" in before.text()  # the call escaped the streams it was made with ...
        monkeypatch.setattr(sys, "stderr", after)
    call.join(60)
    assert codes == [2] and "nowhere \\xe9" in after.text()  # ... and then, in its turn, the one given meanwhile
    assert (before.errors, after.errors) == ("strict", "strict") and not process_state._escaped


def test_plain_progress_lines_with_names_reach_an_ascii_stream(monkeypatch):
    """PlainProgress drops a line it cannot write (a closed stream must not stop training): a dataset named
    `é` lost every progress line on an ASCII stream."""
    from fewshot import progress

    monkeypatch.setattr(progress, "_ENABLED", True)  # a module fixture elsewhere may have left the bars off
    stream = Strict()
    monkeypatch.setattr(sys, "stderr", stream)
    with process_state.escaped_output():
        for _ in progress.track(range(3), desc="predicting digits é"):
            pass
    assert "predicting digits \\xe9: 3/3" in stream.text()


def test_names_that_are_not_utf8_are_shown_with_their_bytes():
    """os.fsdecode keeps a byte that is not UTF-8 as a lone surrogate: shown as `\\xff` (the byte), never as
    `\\udcff`, and never written raw (no text stream, file or figure takes it)."""
    assert undecodable_escaped(UNDECODABLE) == "o\\xff"
    assert undecodable_escaped("é中文") == "é中文"
    assert printable(f"runs/{UNDECODABLE}: x") == "runs/o\\xff: x"
    assert one_line(f"{UNDECODABLE}\n") == "o\\xff\\n"
    assert quoted("." + UNDECODABLE) == "'.o\\xff'"
    assert quoted("a\\udcff") == repr("a\\udcff")  # a backslash in the name, then text: left as repr writes it


def test_a_class_folder_not_named_in_utf8_is_named_with_its_bytes(tmp_path):
    """The layout's problem text was built from the folder's path: it read `\\udcff`."""
    root = build_digits(tmp_path / "root", shots=2)
    shutil.copytree(root / "digits" / "train" / "0", root / "digits" / "train" / UNDECODABLE)
    rc, _, err = run_main("train", "--data", root, "--out", tmp_path / "run", "--epochs", "1", *COMMON)
    assert rc == 2, err
    assert "train/o\\xff: the class folder's name is not valid text" in err
    assert "\\udcff" not in err


def test_the_command_that_builds_demo_data_is_quoted(tmp_path):
    """A root with a space was suggested as `--out /tmp/no pe`: pasted, that built /tmp/no."""
    from fewshot.data.layout import list_datasets

    with pytest.raises(UserError) as caught:
        list_datasets(tmp_path / "no pe")
    assert f"`fewshot data digits --out '{tmp_path / 'no pe'}'`" in str(caught.value)


def test_a_path_not_in_utf8_is_suggested_as_bash_reads_its_bytes(tmp_path):
    """shlex.quote made `'o\\udcff'`, shown `'o\\xff'`: pasted, a folder named with a backslash and `xff`."""
    from fewshot.data.layout import list_datasets

    root = tmp_path / (UNDECODABLE + " '\\")
    with pytest.raises(UserError) as caught:
        list_datasets(root)
    word = f"$'{tmp_path}/o\\xff \\'\\\\'"
    assert f"dataset root {word} does not exist" in str(caught.value)
    assert f"`fewshot data digits --out {word}`" in str(caught.value)
    assert shell_quoted(tmp_path / "é x") == f"'{tmp_path}/é x'"
    # shown by a message escaped, 'a\x1bb' read as a backslash and x1bb: bash's escapes instead
    assert shell_quoted(tmp_path / "a\x1bb") == f"$'{tmp_path}/a\\x1bb'"
    assert shell_quoted(tmp_path / "a\nb\u202e") == f"$'{tmp_path}/a\\x0ab\\xe2\\x80\\xae'"
    if shutil.which("bash"):  # the shell makes of it the name's own bytes
        for path in (root, tmp_path / os.fsdecode(b"\xfe\n\x7fa\xc2\x85"), tmp_path / "a\x1bb\t\u202e é"):
            said = subprocess.run(["bash", "-c", f"printf %s {shell_quoted(path)}"], capture_output=True, check=True)
            assert said.stdout == os.fsencode(path)


def test_the_folders_suggested_by_messages_are_pasted_with_their_bytes(tmp_path):
    """`--data`, `--datasets` and `--out` suggested for a name that is not UTF-8 went through shlex.quote:
    `'o\\udcff'`, shown `'o\\xff'`, which bash reads as a backslash and `xff`."""
    from fewshot.data.layout import list_datasets
    from fewshot.data.names import datasets_option
    from fewshot.report.runs import expand_runs

    root = build_digits(tmp_path / UNDECODABLE, shots=2)
    with pytest.raises(UserError) as caught:
        list_datasets(root / "digits" / "train")
    assert f"Pass --data $'{tmp_path}/o\\xff' --datasets digits" in str(caught.value)
    with pytest.raises(UserError) as caught:
        list_datasets(root / "digits")
    assert f"instead: --data $'{tmp_path}/o\\xff' --datasets digits" in str(caught.value)
    assert datasets_option([os.fsdecode(b"-\xff"), "b"]) == "--datasets=$'-\\xff,b'"
    assert datasets_option(["x\x1b", "b"]) == "--datasets $'x\\x1b,b'"
    stopped = tmp_path / "runs" / UNDECODABLE
    stopped.mkdir(parents=True)
    (stopped / "run_state.json").write_text('{"finished": false}', encoding="utf-8")
    with pytest.raises(UserError) as caught:
        expand_runs([stopped])
    assert f"--data ROOT --out $'{stopped.parent}/o\\xff' --resume" in str(caught.value)


def test_a_label_is_cut_between_escapes():
    """A long label was escaped and then cut, which could cut inside an escape (`xxx\\x…`)."""
    from fewshot.report.plots import _short

    assert _short("x" * 11 + "\udcfe" + "yy", 14) == "x" * 11 + "…"
    assert _short("x" * 9 + "\udcfe" + "yyyy", 14) == "x" * 9 + "\\xfe" + "…"
    assert _short("xx\udcfe", 6) == "xx\\xfe"
    assert _short("é" * 30) == "é" * 27 + "…"


def test_a_run_folder_not_named_in_utf8_is_reported(runs, tmp_path):
    """`fewshot report runs/o\\xff` failed in matplotlib's set_text (a surrogate in the legend) and then in writing
    index.html: its label is shown with the byte escaped."""
    run = tmp_path / UNDECODABLE
    shutil.copytree(runs.ft, run)
    rc, out, err = run_main("report", run, "--out", tmp_path / "report", "--device", "cpu")
    assert rc == 0, err
    page = html.unescape((tmp_path / "report" / "index.html").read_text(encoding="utf-8"))
    assert "o\\xff" in page
    assert f"fewshot report $'{run.parent}/o\\xff' --out" in page  # the command to paste: bash's bytes


def test_plot_labels_not_in_utf8_are_drawn_with_their_bytes(tmp_path, monkeypatch):
    """The accuracy bars' legend names each run by its folder, their ticks each dataset by its folder, and the
    confusion plot's ticks each class: a tick label is drawn again from the name given at each draw, so escaping
    the texts before savefig left the ticks failing in set_text."""
    from matplotlib.figure import Figure

    from fewshot.report import plots

    drawn = {}
    real = Figure.savefig

    def savefig(fig, *args, **kwargs):
        done = real(fig, *args, **kwargs)  # the ticks as this draw made them
        drawn["legend"] = [t.get_text() for t in fig.legends[0].get_texts()] if fig.legends else []
        drawn["x"] = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        drawn["y"] = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        return done

    monkeypatch.setattr(Figure, "savefig", savefig)
    metrics = {"known": {"mean_acc1": 50.0, "datasets": {UNDECODABLE: {"acc1": 50.0}}}, "unknown": None}
    plots.plot_accuracy_bars([UNDECODABLE, "é"], [metrics, metrics], tmp_path / "bars.png")
    assert drawn["legend"] == ["o\\xff", "é"]
    assert drawn["x"] == ["o\\xff", "mean"]
    assert (tmp_path / "bars.png").stat().st_size > 0
    long = os.fsdecode(b"\xfe" + b"x" * 20)
    plots.plot_confusion(np.eye(2, dtype=int), [UNDECODABLE, long], "digits", tmp_path / "confusion.png")
    assert drawn["x"] == drawn["y"] == ["o\\xff", "\\xfe" + "x" * 9 + "…"]
    assert (tmp_path / "confusion.png").stat().st_size > 0
