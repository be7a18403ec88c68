"""data.resize as the decode applies it: crop and pad as given; auto decided once per dataset (aspect.dataset_mode,
from the median the start-up note uses) and recorded in the run's config (RESIZE_RECORD), so that a resume,
predict and eval decode each dataset as the run did even after its folder gained images (review rev87 #1). Where
every dataset gets the same choice the decode takes that word, keyed in the cache as crop or pad are (a square
dataset keeps crop's entries); where they differ, a Fit names each file's. Each dataset's median training image is
recorded beside it (SHAPE_RECORD), for predict's and eval's note on images shaped otherwise."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from fewshot.config.recorded import RESIZE_RECORD, SHAPE_RECORD, resize_record, shape_record


@dataclass(frozen=True)
class Fit:
    """Each dataset's crop or pad under one root: a file under ROOT/<dataset>/ or ROOT/unlabeled/<dataset>/ takes
    its dataset's; any other (a pool of unknown source) ``other``."""

    prefixes: tuple[tuple[str, str], ...]  # (folder + os.sep, crop | pad)
    other: str

    def of(self, path) -> str:
        p = os.path.abspath(path)
        return next((mode for prefix, mode in self.prefixes if p.startswith(prefix)), self.other)

    def key(self, paths) -> str:
        """The cache key's part for ``paths``: crop's (none) or pad's where they all take one, else a hash of each
        file's choice."""
        modes = [self.of(p) for p in paths]
        if len(set(modes)) <= 1:
            return "|pad" if modes and modes[0] == "pad" else ""
        return "|fit" + hashlib.sha1(",".join(modes).encode()).hexdigest()[:12]


def fit_of(cfg: dict, infos=None, root=None) -> str | Fit:
    """What the decode of ``cfg``'s images applies: data.resize's crop or pad; under auto, the recorded choice of
    each dataset (``infos`` not yet recorded are decided and recorded now). ``root``: where the images are (predict
    and eval: the --data root), data.root by default. A run from before data.resize crops (ABSENT_MEANS)."""
    resize = cfg["data"].get("resize", "crop")
    if resize != "auto":
        return resize
    modes = settle_modes(cfg, infos or ())
    if len(set(modes.values())) <= 1:
        return next(iter(modes.values()), "crop")
    base = Path(os.path.abspath(root if root is not None else cfg["data"]["root"]))
    # each dataset's folder as found under the root (info.root): the model's name in the other Unicode form (a
    # decomposed folder on macOS) matched no file, and a padded dataset was decoded by crop (hunt hBT #3)
    found = [(Path(os.path.abspath(i.root)), modes[i.name]) for i in infos or ()
             if getattr(i, "root", None) is not None and i.name in modes]
    named = [(os.path.join(folder, name, ""), mode) for name, mode in modes.items()
             for folder in (base, base / "unlabeled")]
    named += [(os.path.join(where, ""), mode) for folder, mode in found
              for where in (folder, base / "unlabeled" / folder.name)]
    prefixes = tuple(dict.fromkeys(named))
    counts = list(modes.values())
    # a pool file of unknown source takes the majority's choice; a tie: crop (max keeps the first), auto's choice
    # for images not known to be far from square, which a square image decodes to alike under either
    return Fit(prefixes, max(("crop", "pad"), key=counts.count))


def settle_modes(cfg: dict, infos, sizes: dict | None = None) -> dict:
    """auto's choice per dataset name, recorded in ``cfg`` (RESIZE_RECORD): a dataset recorded keeps its choice,
    the others are decided from their headers (``sizes``: those read, filled in here). A malformed record is
    refused (resize_record): where the config was read back from a file, that file's reader refused it first."""
    from fewshot.data.aspect import dataset_mode, header_sizes, sample_paths

    resize_record(cfg, "the run's config")
    if cfg.get(RESIZE_RECORD) is None:
        cfg[RESIZE_RECORD] = {}
    record = cfg[RESIZE_RECORD]  # in place: a shallow copy of cfg shares it
    size = (cfg.get("model") or {}).get("img_size")  # None: not chosen yet, no bound on what is padded
    for info in infos:
        if info.name not in record:
            read = header_sizes(sample_paths(info))
            if sizes is not None:
                sizes[info.name] = read
            record[info.name] = dataset_mode(read, size)
    return record


def resize_changes(then: dict, now: dict, then_where: str) -> list[str]:
    """The datasets that ``now`` (a resumed run's config) decodes otherwise than its checkpoint's config ``then``
    (read from ``then_where``) recorded, as resume_config.resume_changes words a change: an edited RESIZE_RECORD
    switched a half-trained run's images between crop and pad silently (review rev89 #2). Only under auto, and only
    the datasets both record: one recorded since is decided as the run would have."""
    if now.get("data", {}).get("resize") != "auto":
        return []  # crop or pad for every dataset: data.resize itself is compared
    was, kept = resize_record(then, then_where), resize_record(now, "the run's config")
    return [f"{RESIZE_RECORD}.{name} ({was[name]} in the run, {kept[name]} now)"
            for name in was if name in kept and kept[name] != was[name]]


def settle_fit(cfg: dict, infos, then: dict | None = None, then_where: str = "") -> None:
    """At the start of `fewshot run` and `fewshot train`: auto's choice per dataset recorded (a --weights file's
    where the user left data.resize at auto: weights_resize), and the note where a dataset's images are far from
    square (aspect.note_far_from_square), from the same headers. ``then``: a resumed run's checkpoint config (read
    from ``then_where``), whose record fills in the entries deleted from config.yaml; where it differs from this
    config, the resume is refused (Engine.resume) and the note, about settings not used, is left out."""
    from fewshot.data.aspect import note_far_from_square
    from fewshot.data.weights_resize import adopt_weights_resize, note_weights_mismatch

    pending = adopt_weights_resize(cfg, infos)
    auto = cfg["data"].get("resize", "crop") == "auto"
    if then is not None and auto:
        restore_record(cfg, [info.name for info in infos], then, then_where)
    sizes: dict = {}
    modes = settle_modes(cfg, infos, sizes) if auto else None
    note_weights_mismatch(cfg, infos, pending, modes)
    record_shapes(cfg, infos, then)
    if then is not None and (_resize_of(then) != cfg["data"].get("resize", "crop")
                             or resize_changes(then, cfg, then_where)):
        return
    note_far_from_square(cfg, infos, modes, sizes)


def record_shapes(cfg: dict, infos, then: dict | None = None) -> None:
    """Each dataset's median training image recorded in ``cfg`` (SHAPE_RECORD), for predict's and eval's note: one
    recorded (in ``cfg``, else in ``then``, a resumed run's checkpoint config) keeps its shape, the others are read
    from the headers the start-up reads anyway (header_sizes keeps them)."""
    from fewshot.data.aspect import header_sizes, median_shape, sample_paths

    record = {**shape_record(then or {}), **shape_record(cfg)}
    for info in infos:
        if info.name not in record:
            shape = median_shape(header_sizes(sample_paths(info)))
            if shape is not None:
                record[info.name] = shape
    cfg[SHAPE_RECORD] = {name: [int(w), int(h)] for name, (w, h) in record.items()}


def _resize_of(config: dict) -> str:
    """A config's data.resize; crop where it records none (a run from before the field)."""
    return ((config.get("data") or {}) if isinstance(config, dict) else {}).get("resize", "crop")


def restore_record(cfg: dict, names, then: dict, then_where: str, whose: str = "the run's config.yaml") -> None:
    """A resumed run's RESIZE_RECORD entries deleted from its config.yaml (``whose``), put back from its checkpoint's
    config (``then``) for the datasets ``names`` (those scanned now), with a note: decided again from the folder's
    images, they may differ from how the run decoded them, and the refusal blamed an edit ("pad in the run, crop
    now") of a record that was no longer there (hunt hBT #6)."""
    from fewshot.data.warn_once import warn_once

    if _resize_of(then) != "auto":
        return  # data.resize itself differs: refused as such
    was, kept = resize_record(then, then_where), resize_record(cfg, whose)
    missing = {name: was[name] for name in names if name in was and name not in kept}
    if missing:
        cfg[RESIZE_RECORD] = {**kept, **missing}
        listed = ", ".join(f"{name}: {mode}" for name, mode in missing.items())
        warn_once([f"{whose} has no {RESIZE_RECORD} entry for {', '.join(missing)}; {then_where} "
                   f"records how the run decoded them ({listed}), so they decode as before, and config.yaml records "
                   f"{'them' if len(missing) > 1 else 'it'} again once the resume starts."], "note")


def restore_stage_record(scfg: dict, run_cfg: dict, sdir: Path, read) -> None:
    """restore_record for a stopped `fewshot run` stage (``scfg``: its config.yaml as resumed, in ``sdir``) whose
    entries were deleted: its task decided them again from the images, and its resume was refused as an edit of the
    record (review rev91 #6). ``run_cfg``: the run's config, whose record names the datasets; ``read``: reads the
    stage's last.pt, only where an entry is missing."""
    names = list(resize_record(run_cfg, "the run's config"))
    kept = scfg.get(RESIZE_RECORD) if isinstance(scfg.get(RESIZE_RECORD), dict) else {}
    if _resize_of(scfg) != "auto" or all(name in kept for name in names):
        return
    last = Path(sdir) / "checkpoints" / "last.pt"
    then = read(last).get("config") if last.is_file() else None
    if isinstance(then, dict):
        restore_record(scfg, names, then, f"checkpoint {last}", f"{Path(sdir) / 'config.yaml'}")
