"""`fewshot probe`: its handler, the key=value word it takes, and the guards of its --out (a run's folder, a
folder another command is writing, a metrics.json that is not a probe's).

Apart from cli_moco because probe trains no network and shares none of the training commands' config rules; most of
it is about where its metrics.json may be written.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path


# the key=value words probe takes (cli_parser._parse refuses the others): it decodes images as train does and trains no
# network, so of the config only how 16-bit images are read and how they are fitted to a square apply (eval and
# predict take both from the run); data.resize's auto decides per dataset as train does, so that probe's baseline
# scores the pixels a run on the same data trains on (it always cropped: review rev89 #4)
PROBE_WORDS = ("data.bit_depth", "data.resize")


def probe_data(extra: list[str]) -> tuple[int | str | None, str]:
    """data.bit_depth and data.resize from probe's key=value words, checked as train checks them
    (`data.bit_depth=abc` is an error naming the field). bit_depth None when not given (then the one --weights
    records, or auto: eval.probe); resize its default (auto) when not given."""
    from fewshot.config import DEFAULTS, resolve

    data = resolve(overrides=extra)["data"] if extra else DEFAULTS["data"]
    given = {w.partition("=")[0].strip() for w in extra}
    return (data["bit_depth"] if "data.bit_depth" in given else None), data["resize"]


PROBE_RUN_MARKERS = ("checkpoints", "log.jsonl", "config.yaml", "run_state.json")


def _probe_busy(out: Path, ended: bool = False):
    """The refusal of a --out whose lock another command holds (a run training there, another probe)."""
    lost = " The probe's metrics (the table above) were not written." if ended else ""
    return lambda who: (f"--out {out} is being written by {who}; probe writes metrics.json there and would replace "
                        f"that command's (a run's, or another probe's).{lost} Give the probe a folder of its own "
                        f"(e.g. {out / 'probe'}), or wait for the other command to finish.")


def _refuse_a_run_in(out: Path, ended: bool = False) -> None:
    """A run folder's metrics.json is the run's own (compare and report read it): never replaced by a probe's."""
    from fewshot.errors import UserError

    if any((out / marker).exists() for marker in PROBE_RUN_MARKERS):
        if ended:  # a train into --out that started (and maybe finished) while the probe ran
            raise UserError(f"--out {out}: a run was started there while the probe ran; probe writes metrics.json "
                            f"there and would replace the run's, so the probe's metrics (the table above) were not "
                            f"written. Give the probe a folder of its own (e.g. {out / 'probe'}).")
        raise UserError(f"--out {out} holds a run; probe writes metrics.json there and would replace the run's. "
                        f"Give the probe a folder of its own (e.g. {out / 'probe'}).")


def _check_probe_out(args) -> tuple | None:
    """Refuse an --out the probe must not write, before any work; returns output_state of its metrics.json, which
    the write at the end checks again. An existing folder is locked for the probe (as a run's is): a train started
    into it meanwhile is refused instead of having its metrics.json replaced at the probe's end."""
    from fewshot.data.output_guard import check_output_is_not_in_data
    from fewshot.eval.output_files import PROBE_METRICS, check_own_output, holds_metrics
    from fewshot.errors import UserError
    from fewshot.run_lock import lock_run_dir, output_state
    from fewshot.utils import check_output_dir, check_output_file

    # `--out ROOT/<ds>/train/probe` became a class folder without images, and every command refused ROOT
    check_output_is_not_in_data(Path(args.out), args.data, what="the probe", reads_pool=False)  # no pool read
    out = check_output_dir(args.out)
    if out.is_dir():
        lock_run_dir(out, _probe_busy(out))  # before the folder is judged: a run finishing now is seen below
    _refuse_a_run_in(out)
    # metrics.json is a name probe picks, not one the user typed: a link so named is replaced by the write (as in
    # a run folder), not followed, so only --out's own folder counts (its target's was checked, a folder refused)
    if not (out / "metrics.json").is_symlink():
        if (out / "metrics.json").is_dir():
            raise UserError(f"{out / 'metrics.json'} is a folder; probe writes its metrics.json into --out: "
                            f"choose another --out.")
        check_output_file(out / "metrics.json")
        check_own_output(out / "metrics.json", f"--out {args.out}: its metrics.json", "probe",
                         lambda p: holds_metrics(p, PROBE_METRICS), "metrics.json content: datasets, split and "
                         "protocol", f"Give --out a folder of the probe's own, or move {out / 'metrics.json'} "
                         f"away first.")
    return output_state(out / "metrics.json")


def _write_probe_metrics(out: Path, metrics: dict, before: tuple | None) -> None:
    """metrics.json into --out, judged again under the folder's lock: a train may have started there, or finished
    there, since _check_probe_out, and its metrics.json was replaced by the probe's (exit 0 for both)."""
    from fewshot.data.cache_files import ensure_writable_dir
    from fewshot.errors import UserError
    from fewshot.run_lock import lock_run_dir, write_unless_changed
    from fewshot.utils import write_json

    ensure_writable_dir(out, "probe")  # made only now: a probe that fails leaves no folder
    lock_run_dir(out, _probe_busy(out, ended=True))
    _refuse_a_run_in(out, ended=True)
    if not write_unless_changed(out / "metrics.json", lambda p: write_json(p, metrics), before):
        raise UserError(f"{out / 'metrics.json'} was written by another command while the probe ran; the probe's "
                        f"metrics (the table above) were not written over it. Give the probe a folder of its own "
                        f"(e.g. {out / 'probe'}).")


def cmd_probe(args, extra) -> int:
    from fewshot.errors import UserError
    from fewshot.eval.evaluate import format_table
    from fewshot.eval.probe import bit_depth_for, run_probe
    from fewshot.utils import resolve_device

    bit_depth, resize = probe_data(extra)  # before any work: a bad value is refused at once
    if not -2**63 <= args.seed <= 2**64 - 1:  # torch.manual_seed's range, as train.seed's check (review rev81)
        raise UserError(f"--seed must be in [-2^63, 2^64-1], not {args.seed}.")
    if not args.model:
        from fewshot.models.backbone import adopt_weights_model
        from fewshot.models.weights_file import check_weights_path

        if args.weights:  # a folder or a missing file is the real trouble: "--model is required" misled
            check_weights_path(args.weights)
        args.model = adopt_weights_model({"name": None, "weights": args.weights}, given=False)
        if not args.model:
            raise UserError(f"--model is required: {args.weights or 'a random initialisation'} records no model "
                            f"(give the timm model name the weights belong to).")
    from fewshot.models.backbone import timm_name

    args.model = timm_name(args.model)  # the name the metrics record
    bit_depth = bit_depth_for(args.weights, bit_depth)  # a file that cannot be read is reported as it loads
    if args.head == "prototype" and args.epochs is not None:
        print(f"warning: --epochs {args.epochs} is ignored: --head prototype trains no head (class means of the "
              f"features).", file=sys.stderr, flush=True)
    with _probe_lock_file_removed(args.out):
        before = _check_probe_out(args) if args.out else None
        metrics = run_probe(args.weights, args.model, args.data, args.img_size, resolve_device(args.device),
                            mode=args.mode, epochs=args.epochs or 300, datasets=args.datasets, head=args.head,
                            skip_bad=args.skip_bad_images, bit_depth=bit_depth, seed=args.seed,
                            resize=resize, resize_given=any(w.partition("=")[0].strip() == "data.resize"
                                                            for w in extra))
        print(format_table(metrics, title=f"{metrics['protocol']} of {args.weights or 'random init (no weights)'}"))
        if args.out:
            _write_probe_metrics(Path(args.out), metrics, before)
    return 0


@contextmanager
def _probe_lock_file_removed(out: str | None):
    """The lock file probe makes in --out goes again at its end, finished or failed: a run folder keeps its lock
    file (the run's next --resume locks it), but a probe's folder is the user's, with metrics.json in it at most.
    Only a file this command created and still holds, judged at the end (a file seen at the start may be gone by the
    time the lock is taken, and one missing then may be a run's by now), in a folder that holds no run; removed while
    still locked (unlock_and_remove)."""
    from fewshot.run_lock import made_lock_file, unlock_and_remove

    try:
        yield
    finally:
        if out and made_lock_file(out) and not any((Path(out) / m).exists() for m in PROBE_RUN_MARKERS):
            unlock_and_remove(out)
