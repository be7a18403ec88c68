"""The `fewshot` command line (SPEC's "Command-line contract").

Exit codes: 0 success, 2 user error (one paragraph, no traceback), 1 internal error.
Unknown `key=value` words after the options override config fields (`optim.lr=3e-4`).

Here: the commands (cmd_*) and main(), which runs one and turns how it ended into the exit status and what is said
on stderr. The parser and its help are in cli_parser, a training command's config from its flags and words in
cli_config, the process's streams and the turn of main() calls in cli_process, torchrun's processes in cli_ranks,
pretrain, export and the MoCo side's parsers in cli_moco, run in cli_run, probe in cli_probe, and the warnings
about settings a training command does not use in cli_warnings.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path

from fewshot.cli_config import TRAIN_FLAGS, resolve_run_config
from fewshot.cli_parser import _help_command, _parse
from fewshot.cli_process import _TURN, _devnull_onto, _messages_off_the_output, _plug_closed_stderr, _stderr_present
from fewshot.cli_ranks import (_CALL, _a_peer_said_why, _a_peer_stopped, _argparse_said_once, _command_call,
                               _first_exit, _first_to_say, _process_group_started, _quiet_rank, _speaker_failed_too,
                               _speaker_spoke, exit_past_teardown, launch_rank, refuse_several_processes,
                               world_size_env)
from fewshot.errors import UserError, one_line, printable
from fewshot.train.stop_signal import StopRequested


def cmd_data(args, extra) -> int:
    from fewshot.data.build import build_dataset
    from fewshot.utils import check_output_dir

    if args.idx_dir and args.name != "fashion-mnist":  # it was ignored without a word
        raise UserError(f"--idx-dir is where the fashion-mnist IDX files are; {args.name} is built from "
                        f"scikit-learn's bundled copy and takes no --idx-dir.")
    check_output_dir(args.out)  # before decoding the source files
    summary = build_dataset(args.name, Path(args.out), shots=args.shots, seed=args.seed,
                            idx_dir=Path(args.idx_dir) if args.idx_dir else None, val_per_class=args.val_per_class,
                            test_per_class=args.test_per_class, pool_per_class=args.pool_per_class)
    print(f"built {summary['dataset']} in {args.out}: {summary['classes']} classes, {summary['train']} train, "
          f"{summary['val']} val, {summary['test']} test, {summary['unlabeled']} unlabeled")
    return 0


def cmd_train(args, extra) -> int:
    from fewshot.train.finetune import run_finetune

    cfg = resolve_run_config(args, extra, TRAIN_FLAGS)
    from fewshot.cli_warnings import warn_pretrain_config, warn_unused_overrides

    warn_pretrain_config(args.config, "train")
    warn_unused_overrides("train", cfg, extra)
    run_finetune(cfg, Path(args.out), resume=args.resume)
    if launch_rank() == 0:  # under torchrun: once, after rank 0's metrics table
        print(f"done: {args.out}/metrics.json, checkpoints in {args.out}/checkpoints/")
    return 0


def cmd_eval(args, extra) -> int:
    from fewshot.data.output_guard import check_result_file_is_not_an_input
    from fewshot.eval.evaluate import format_table
    from fewshot.eval.output_files import EVAL_METRICS, check_own_output, holds_metrics
    from fewshot.eval.predict import evaluate_run
    from fewshot.run_lock import output_state
    from fewshot.utils import check_output_file, resolve_device

    before = None
    if args.out:
        out = check_output_file(args.out, example="metrics.json")
        check_result_file_is_not_an_input(args.out, args.data, args.run, kind="metrics")
        check_own_output(out, f"--out {args.out}", "eval", lambda p: holds_metrics(p, EVAL_METRICS),
                         "metrics.json content: datasets, split and checkpoint",
                         f"Give --out a new file name, or move {args.out} away first.")
        _refuse_a_live_run_record(args.out)
        before = output_state(out, follow_links=True)  # checked again at the write
    if args.balance and (args.split != "test" or args.mode != "known"):  # the val split is what auto decides on
        print(f"fewshot eval: note: --balance applies to known-source test scores only; --split {args.split} "
              f"--mode {args.mode} is scored as the model predicts it.", file=sys.stderr)
    metrics = evaluate_run(args.run, args.data, args.mode, resolve_device(args.device, "--device"),
                           split=args.split, datasets=args.datasets, skip_bad=args.skip_bad_images,
                           balance=args.balance)  # None: the run's recorded run.balance, else auto
    print(format_table(metrics, title=f"{args.split} accuracy of {metrics['checkpoint']}"))
    if args.out:
        _write_eval_metrics(args.out, metrics, before)
    return 0


def _refuse_a_live_run_record(out) -> None:
    """`eval --out RUN/metrics.json` while RUN trains: whichever of the two wrote last replaced the other's file
    (the run's own record, which compare and report read, or eval's result, exit 0 for both)."""
    from fewshot.data.output_guard import RUN_RECORDS
    from fewshot.run_lock import being_written

    folder = Path(os.path.abspath(out)).parent
    if Path(out).name in RUN_RECORDS and being_written(folder):
        raise UserError(f"--out {out}: a run is being trained in {folder}, and writes its own {Path(out).name} "
                        f"there when it ends; eval's would replace it, or be replaced. Write the result to another "
                        f"file (e.g. {folder / 'eval_metrics.json'}).")


def _write_eval_metrics(out, metrics: dict, before: tuple | None) -> None:
    """--out as the check at the start found it (output_state), else refused: a train that finished into its folder
    meanwhile (RUN/metrics.json, new when eval started) had its metrics replaced by eval's."""
    from fewshot.run_lock import write_unless_changed
    from fewshot.utils import write_json

    # the user's path: a link writes its target
    if not write_unless_changed(out, lambda p: write_json(p, metrics, follow_links=True), before, follow_links=True):
        raise UserError(f"--out {out} was written by another command while eval ran (a run that ended in its folder, "
                        f"or another eval); eval's metrics (the table above) were not written over it. Give --out a "
                        f"new file name and run eval again.")


def cmd_predict(args, extra) -> int:
    from fewshot.data.output_guard import check_result_file_is_not_an_input
    from fewshot.eval.output_files import check_predict_out, holds_routing
    from fewshot.eval.predict import predict_run
    from fewshot.utils import check_output_file, name_fits, resolve_device, write_json, written_in_place

    out = check_output_file(args.out, example="pred_all.json")
    check_result_file_is_not_an_input(args.out, args.data, args.run, kind="predictions")
    # a stream or device (/dev/stdout, a pipe, /dev/fd/3) has no folder of the user's beside it: /dev/stdout gave
    # /dev/stdout.routing.json (as root, a new file in /dev), /dev/fd/3 an error after the whole prediction
    routing_file = None if written_in_place(out) else out.with_name(out.stem + ".routing.json")
    routing_fits = routing_file is not None and name_fits(routing_file)
    if args.mode == "unknown" and routing_file is None:
        print(f"fewshot predict: note: --out {args.out} is a stream or device, not a file in a folder: the routing "
              f"(each image's predicted dataset, NAME.routing.json beside a file --out) is not written; give --out "
              f"a file name to keep it.", file=sys.stderr, flush=True)
    if args.mode == "unknown" and routing_file is not None:
        if not routing_fits:  # refused after the whole prediction, on a name never typed
            raise UserError(f"--out {args.out}: --mode unknown also writes each image's predicted dataset beside it, "
                            f"to {routing_file.name}, a name longer than this file system allows; choose a shorter "
                            f"--out.")
        if routing_file.is_dir():  # found after the whole prediction, with another path's advice
            raise UserError(f"--out {args.out}: --mode unknown also writes each image's predicted dataset beside it, "
                            f"to {routing_file}, which is a folder; move that folder away or choose another --out.")
    check_predict_out(out, routing_file, args.out, args.mode == "unknown" and routing_fits)
    if args.balance and args.mode != "known":  # classes compete across datasets there: not evened out per dataset
        print("fewshot predict: note: --balance applies to known-source predictions only; --mode unknown predicts "
              "as the model does.", file=sys.stderr)
    pred, routing = predict_run(args.run, args.data, args.mode, resolve_device(args.device, "--device"),
                                datasets=args.datasets, skip_bad=args.skip_bad_images, balance=args.balance)
    write_json(out, pred, follow_links=True)  # the user's path: a link writes its target
    if args.mode == "unknown" and routing_file is not None:
        write_json(routing_file, routing)
    elif routing_fits and holds_routing(routing_file):  # an earlier --mode unknown's would no longer describe these
        routing_file.unlink(missing_ok=True)  # only predict's own: a user's file, folder or link so named stays
    n = sum(len(v) for k, v in pred.items() if k != "n_parameters")
    print(f"wrote {out}: {n} predictions over {len(pred) - 1} dataset(s), mode {args.mode}")
    if args.mode == "unknown":
        _say_routing(routing, routing_file)
    return 0


def _say_routing(routing: dict, routing_file) -> None:
    """The routing file predict --mode unknown wrote, and per dataset the images routed to another one, which
    pred_all.json holds as -1: a user found a whole dataset of -1 from the grader."""
    from fewshot.eval.predict import MISROUTED
    from fewshot.eval.routing import routed_elsewhere

    if routing_file is not None:
        print(f"wrote {routing_file}: each test image's predicted dataset")
    away = routed_elsewhere(routing)
    if away:
        counts = ", ".join(f"{name} {k} of {n}" for name, (k, n) in away.items())
        print(one_line(f"routed to other datasets (written as {MISROUTED}, never a correct class): {counts}"))


def cmd_models(args, extra) -> int:
    from fewshot.models.catalog import list_models

    print(list_models(args.pattern, args.limit))
    return 0


def cmd_report(args, extra) -> int:
    from fewshot.report.build import build_report

    if args.grid < 0:
        from fewshot.errors import UserError

        raise UserError("--grid must be 0 or more images.")
    index = build_report(args.runs, Path(args.out), data=args.data, device=args.device, tsne=args.tsne,
                         grid_images=args.grid, skip_bad=args.skip_bad_images)
    print(f"report: {index}")
    return 0


def cmd_compare(args, extra) -> int:
    from fewshot.report.compare import run_compare

    run_compare(args.runs)
    return 0


COMMANDS = {"data": cmd_data, "train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "models": cmd_models,
            "report": cmd_report, "compare": cmd_compare}


def console_main() -> int:
    """The `fewshot` command and `python -m fewshot`: a fresh process, whose start-up (imports) counts toward
    `fewshot run --budget-minutes`. A call of main() from Python (tests, notebooks) starts its clock at the call."""
    import gc

    import fewshot

    _plug_closed_stderr()
    code = main(started=fewshot.PROCESS_START)
    exit_past_teardown(code)  # a failure under torchrun: not through gloo's teardown (it can abort the process)
    # the interpreter's exit collects every object (torch, matplotlib, the run's tensors) before the process ends:
    # 1.2-1.5 s after `fewshot run`'s last line on 2 idle cores, 4-8 s on a busy machine, outside its budget;
    # everything is written and closed by now, so the exit leaves them to the operating system
    gc.freeze()
    return code


# OSErrors that describe the machine (disk, permissions, paths), which the user can fix: exit 2, no traceback
ENVIRONMENT_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                                errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP})


def main(argv: list | None = None, started: float | None = None) -> int:
    """Run one fewshot command, as the shell would: ``main(["train", "--data", root, ...])``.

    Returns the exit status (0 done, 2 a user error, 1 a bug, 128+N stopped by signal N) with the messages on
    stderr. As with any argparse program, ``--help``, ``--version`` and a malformed command line raise
    ``SystemExit`` after printing the usage. Paths and numbers may be given as ``pathlib.Path`` and ``int``.
    Called from Python, the command gives back what it changed in the process: its run-folder locks, the
    torch thread count, deterministic mode, the global random states and the variable torch sets
    (TORCHINDUCTOR_CACHE_DIR). Calls from several threads run one at a time: a call made while another runs waits
    for it (said on stderr). What stdout and stderr cannot encode (an ASCII or Latin-1 locale) is written escaped.
    """
    from fewshot import process_state

    with _stderr_present(), process_state.escaped_output():  # argparse's messages and the wait for the turn name
        return _main(argv, started)  # what was typed too


def _main(argv: list | None, started: float | None) -> int:
    if argv is not None:
        argv = [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in argv]
    argv = _help_command(sys.argv[1:] if argv is None else argv)
    with _argparse_said_once():
        args, extra = _parse(argv)
    args.started = started
    try:  # torch and torchvision ask for it while being imported: that traceback read as a bug in fewshot
        tempfile.gettempdir()
    except FileNotFoundError as exc:  # /tmp, /var/tmp and the current folder all unwritable
        if _quiet_rank() and _speaker_failed_too():  # every torchrun process meets it: the first of the node says it
            return 2
        rank = f"rank {os.environ.get('RANK', '?')}: " if _quiet_rank() else ""
        print(f"fewshot {args.command}: {rank}error: {printable(str(exc.strerror or exc))}. Set TMPDIR to a folder you "
              f"can write (e.g. `mkdir -p ~/tmp && export TMPDIR=~/tmp`) and run the command again.", file=sys.stderr)
        return 2
    with _TURN.taken(args.command) as stopped:
        if stopped:  # Ctrl-C in a notebook while this call waited: it did nothing
            print(f"fewshot {args.command}: stopped while waiting for the other fewshot command of this process; "
                  f"nothing was done.", file=sys.stderr)
            return 128 + signal.SIGINT
        return _main_alone(args, extra)


def _main_alone(args, extra) -> int:
    """The command itself, the only one running in this process (_Turn)."""
    from fewshot import cli_moco

    handlers = {**COMMANDS, **cli_moco.COMMANDS}
    from fewshot import progress

    bars = progress.is_enabled()
    if getattr(args, "no_progress", False):
        progress.set_enabled(False)
    from fewshot import process_state
    from fewshot.config import one_read_per_file
    from fewshot.run_lock import lock_scope
    from fewshot.train.stop_signal import sigterm_as_interrupt

    try:  # the run folders this command locks are free again when it returns, and the caller's settings back
        # under torchrun a rank blocked in a collective is ended by a watcher thread: the stop is said there
        blocked = lambda: _interrupted(args, signal.SIGTERM, from_watcher=True)  # noqa: E731
        # the streams escaped again, as they are now: the caller may have swapped sys.stdout while this call waited
        # its turn; a --config file read once, whatever reads it (config.one_read_per_file)
        with process_state.escaped_output(), process_state.kept(), lock_scope(args.command), _command_call(), \
                sigterm_as_interrupt(blocked), one_read_per_file():
            return _dispatch(args, extra, handlers)
    finally:
        progress.set_enabled(bars)  # as were: --no-progress of one in-process call does not outlive it


def _dispatch(args, extra, handlers) -> int:
    code = _run_command(args, extra, handlers)
    if code and _process_group_started():
        from fewshot.train.distributed import report_exit

        # said after its message: a quiet rank that failed too waits for the speaker's (_speaker_spoke), and the
        # ranks that torchrun then ends look for any (_a_peer_said_why)
        report_exit(code, call=_CALL.get())
    return code


def _run_command(args, extra, handlers) -> int:
    try:
        refuse_several_processes(args.command)
        if args.command in ("train", "pretrain", "run"):
            from fewshot.runtime import check_environment

            check_environment()  # a typo is refused before any folder is written
        with _messages_off_the_output(args):
            code = handlers[args.command](args, extra) or 0
        if _process_group_started():  # under torchrun: leave no process group to interpreter teardown
            from fewshot.train.distributed import shutdown_distributed

            shutdown_distributed()  # on success only: after a failure a peer may never answer
        return code
    except UserError as exc:
        message = printable(str(exc))
        if getattr(exc, "every_process", False) or (not _quiet_rank() and _first_to_say(message)):
            print(f"fewshot {args.command}: error: {message}", file=sys.stderr)
        elif _quiet_rank() and not _speaker_spoke(message):  # an error of this rank alone: say which rank met it
            print(f"fewshot {args.command}: rank {os.environ.get('RANK', '?')}: error: {message}", file=sys.stderr)
        return 2
    except StopRequested as stop:
        how = f"; {CONTINUE}"
        kept = "the stages finished so far are kept" if args.command != "run" or _run_stages_finished(
            Path(args.out)) else "no stage had finished"
        where = (f"after a whole step; checkpoint written: {stop.checkpoint}" if stop.checkpoint else
                 f"outside training ({kept})")
        decoded = _decode_kept()
        if not stop.checkpoint and args.command == "run" and not _is_file(Path(args.out, "run_state.json")):
            where, how = "before the run started", _nothing_to_resume(decoded)
        elif decoded:
            how += f"; {decoded}"
        try:  # said first: once another rank has exited, torchrun ends this one with SIGTERM
            if not _quiet_rank():
                print(f"fewshot {args.command}: {stop} {where}{how}", file=sys.stderr, flush=True)
        except OSError:  # stderr went away with the same Ctrl-C (`... 2>&1 | tee log`)
            try:  # nor may the interpreter's final flush fail on it
                _devnull_onto(sys.stderr.fileno())
            except (OSError, ValueError, AttributeError):
                pass
        if _process_group_started():  # every rank passed the stop's barrier: safe to tear down
            from fewshot.train.distributed import shutdown_distributed

            shutdown_distributed()
        return 128 + int(stop.signum)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM outside training (training stops cleanly: StopRequested)
        return _interrupted(args, getattr(exc, "signum", signal.SIGINT))  # stop_signal.Terminated: SIGTERM
    except BrokenPipeError:  # the reader went away (`fewshot models | head`): not a bug, no traceback
        try:  # keep the interpreter's final flush from failing again
            _devnull_onto(sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141  # 128 + SIGPIPE, what the shell reports for a command cut off this way
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            traceback.print_exc()
            print(f"fewshot {args.command}: internal error (a bug; please report it with the traceback above).",
                  file=sys.stderr)
            return 1
        # the machine's answer, not a bug: a read-only or full disk, a missing permission, a path too long
        where = f" {printable(os.fsdecode(exc.filename))}:" if exc.filename else ""
        print(f"fewshot {args.command}: error:{where} {exc.strerror or exc} ({_environment_advice(args, exc)}).",
              file=sys.stderr)
        return 2
    except Exception as exc:
        if isinstance(exc, RuntimeError) and str(exc).startswith("Symlink loop from"):  # pathlib's resolve(), 3.11-12
            print(f"fewshot {args.command}: error: {exc}: a path given goes round a loop of symbolic links; give "
                  f"another path.", file=sys.stderr)
            return 2
        if _a_peer_stopped(exc):  # a user error on rank 0 alone (a held lock, a full disk) is not a bug on rank 1
            first_exit = _first_exit(1.0)
            if first_exit in (128 + signal.SIGINT, 128 + signal.SIGTERM):
                # rank 0 was interrupted, so was this rank (a terminal's Ctrl-C and torchrun's forwarded SIGINT reach
                # every process), whose own SIGINT may come only after the closed connection: not "another process"
                return _interrupted(args, signal.Signals(first_exit - 128))
            if _a_peer_said_why():  # the rank that stopped first said why (a user error of rank 1 alone)
                return 1
            first = clipped((str(exc).strip().splitlines() or [""])[0], 160)
            print(f"fewshot {args.command}: rank {os.environ.get('RANK', '?')} stopped because another process of "
                  f"this torchrun job ended first (its message above, if any, says why; torchrun's summary names its "
                  f"exit code; here: {first}).{_kept_after_peer(args)}", file=sys.stderr)
            return 1
        traceback.print_exc()
        print(f"fewshot {args.command}: internal error (a bug; please report it with the traceback above).",
              file=sys.stderr)
        return 1


CONTINUE = "continue with the same command and --resume"  # what a stopped train or pretrain says (StopRequested)


def _kept_after_peer(args) -> str:
    """A train or pretrain that another rank's end stopped mid-training writes no checkpoint: where --resume
    continues from instead (last.pt's epoch and step), for the line that says why this rank stopped. Torchrun's
    SIGTERM to this rank had said "stopping after this step and writing a checkpoint", and last.pt was epochs old."""
    out = getattr(args, "out", None)
    if not out or args.command not in ("train", "pretrain"):
        return ""
    last = Path(out, "checkpoints", "last.pt")
    if not _is_file(last):
        return " No checkpoint was written: nothing to resume; start the same command again."
    try:
        from fewshot.train.checkpoint import load_checkpoint

        ck = load_checkpoint(last, mmap=True)
        epoch, step, total = int(ck["epoch"]), int(ck.get("step_in_epoch") or 0), int(ck["config"]["train"]["epochs"])
        at = f"global step {int(ck['global_step'])}"
    except Exception:  # noqa: BLE001 - unreadable here: said without its position
        return f" No checkpoint was written at this stop; the ones written before it are kept: {CONTINUE}."
    if epoch >= total and not step:  # training had ended (the results were being written)
        return (f" No checkpoint was written at this stop: {last} holds the whole run (all {epoch} epochs, {at}): "
                f"the same command with --resume writes its results again.")
    held = f"step {step} of epoch {epoch + 1}" if step else f"the end of epoch {epoch}"
    return f" No checkpoint was written at this stop: {last} holds {held} ({at}); {CONTINUE} to go on from there."


def _nothing_to_resume(decoded: str) -> str:
    """The end of a stop line where no run or checkpoint was written, with what a stopped decode kept (``decoded``,
    _decode_kept): "nothing to resume" alone read as if a Ctrl-C at 34% of a pool's decode had lost it all."""
    if not decoded:
        return "; nothing to resume: start the same command again"
    return f"; nothing to resume, but {decoded}: start the same command again"


def _decode_kept() -> str:
    """What this command's stopped image decodes kept in the cache (cache_partial.kept_note), "" where none: from
    the loaded module only (a command that decoded nothing has not loaded it)."""
    partial = sys.modules.get("fewshot.data.cache_partial")
    return partial.kept_note() if partial is not None else ""


def _environment_advice(args, exc: OSError) -> str:
    """What to do about an OSError of the machine: for its reason, then how to go on. A train whose disk filled
    while it wrote metrics.json was told to "run the command again", which refuses a folder that holds a run."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space on that disk, or write elsewhere"
    elif exc.errno == errno.ENAMETOOLONG:
        fix = "choose a shorter name"
    else:
        fix = "check the path and its permissions"
    out = getattr(args, "out", None)
    if out and args.command in ("train", "pretrain") and _is_file(out, "checkpoints", "last.pt"):
        return (f"{fix}, then run the same command with --resume: it continues from the last checkpoint, or "
                f"(training had finished) writes the results again")
    if out and args.command == "run" and _is_file(out, "run_state.json"):
        return f"{fix}, then run the same command with --resume: the stages finished so far are kept"
    return f"{fix}, then run the command again"


def _is_file(*parts) -> bool:
    """Whether the path is a file, False where it cannot be told. Path.is_file() raises PermissionError (an --out
    that cannot be searched): said while an OSError is reported, it replaced exit 2 with a traceback."""
    return os.path.isfile(os.path.join(*parts))


def clipped(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word's end, with "..." where cut: a peer's gloo message
    cut mid-word ("caused by a remote worker c") read as garbled."""
    if len(text) <= limit:
        return text
    cut = text[:limit - 3]
    if text[limit - 3] != " " and " " in cut:  # the cut fell inside a word: drop it whole
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:.") + "..."


def _interrupted(args, signum: int, from_watcher: bool = False) -> int:
    """Ctrl-C or SIGTERM outside training: what was kept, and the exit status 128 + signum. Not said where torchrun's
    SIGTERM followed another rank's failure, which that rank has said (_a_peer_said_why). From sigterm_as_interrupt's
    watcher thread the store is not asked (the blocked main thread may hold it), and the line is written with
    os.write: print waited for stderr's lock, which a main thread stuck writing to stderr holds."""
    if signum == signal.SIGTERM and not from_watcher and _a_peer_said_why():
        return 128 + int(signum)
    out, decoded = getattr(args, "out", None), _decode_kept()
    if out and args.command == "run" and _is_file(out, "run_state.json"):
        kept = "the stages finished so far are kept" if _run_stages_finished(Path(out)) else "no stage had finished"
        note = f"; {kept}: {CONTINUE}"
    elif out and args.command in ("train", "pretrain") and _is_file(out, "checkpoints", "last.pt"):
        # after the last epoch (plots or metrics being written), or a second Ctrl-C that did not wait for the
        # step's checkpoint: said bare, it read as a lost run
        note = ("; the checkpoints written so far are kept: the same command with --resume continues the run "
                "from the last one, or (training had finished) writes its results again")
    elif out and args.command in ("run", "train", "pretrain"):  # said bare, "interrupted" left the user guessing
        note, decoded = _nothing_to_resume(decoded), ""
    else:
        note = ""
    if decoded:
        note += f"; {decoded}"
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    if signum == signal.SIGTERM and world_size_env() > 1 and (from_watcher or not _process_group_started()):
        # no store to ask (before the process group, or from the watcher thread): torchrun's SIGTERM may be its
        # answer to another process's failure (a flag given to rank 1 only), which "start again" would repeat
        what += " (if another process of this torchrun job failed first, its message above says why)"
    try:
        if not _quiet_rank() and from_watcher:
            os.write(2, f"fewshot {args.command}: {what}{note}\n".encode(errors="replace"))
        elif not _quiet_rank():
            print(f"fewshot {args.command}: {what}{note}", file=sys.stderr, flush=True)
    except OSError:  # stderr went away with the same signal (`... 2>&1 | tee log`)
        pass
    return 128 + int(signum)


def _run_stages_finished(out: Path) -> bool:
    """Whether run_state.json records a finished stage (a stop before round 1's end said "the stages finished so
    far are kept" of none)."""
    try:
        stages = json.loads(Path(out, "run_state.json").read_text()).get("stages", {})
        return any(isinstance(st, dict) and st.get("status") in ("trained", "done") for st in stages.values())
    except (OSError, ValueError, AttributeError, RecursionError):  # RecursionError: nested too deeply to be read
        # caught here, not by utils.loads_run_json: a Ctrl-C handler may run before fewshot.utils (and torch) is loaded
        return False


if __name__ == "__main__":
    raise SystemExit(main())
