"""Small shared helpers: atomic writes, seeding, devices."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import torch


def check_output_file(path, flag: str | None = "--out", example: str = "out.json") -> Path:
    """Refuse, before any work, an output file path that cannot be written because of its shape: an existing
    folder, a new one typed with a trailing separator (`--out NEWDIR/` wrote a file named NEWDIR), or a file where a
    parent folder should be (these surfaced as tracebacks after the work). A symbolic link is judged by its target's
    folder, which the write goes to (the link's own folder was checked: predict did its work, then could not write
    into the target's read-only folder). ``flag`` None: no option named (a write deep in a command), the path alone
    is shown."""
    from fewshot.errors import UserError

    slash = _ends_with_separator(path)
    if isinstance(path, str) and path == "-":  # many tools' word for standard output: here it wrote a file named "-"
        raise UserError(f"{flag or 'the output'} -: '-' is not read as standard output here (a file named '-' "
                        f"would be written); give a file name, e.g. {example}, or /dev/stdout.")
    path = Path(path)
    said = f"{flag} {path}" if flag else f"the output {path}"
    if path.is_dir() or slash:
        from fewshot.data.output_guard import data_folder_around

        data = data_folder_around(path)
        if data:  # a file in it would be refused as data (check_result_file_is_not_an_input): suggest none there
            raise UserError(f"{said} is a folder of the data ({data[1]}), and a result must not be written into the "
                            f"data; give a file name outside the datasets' files, e.g. {data[0] / example}.")
        if not path.is_dir():  # `--out NEWDIR/`: Path drops the separator, and a file named NEWDIR was written
            raise UserError(f"{said}{slash} ends with '{slash}' (a folder), but it is written as a file; give a file "
                            f"name in the folder, e.g. {path / example}.")
        raise UserError(f"{said} is a folder; give a file name in it, e.g. {path / example}.")
    if is_special_file(path):  # /dev/stdout, a named pipe: written in place (atomic_write_bytes)
        if not os.access(path, os.W_OK):
            raise UserError(f"{said} cannot be written (no permission).")
        return path
    folder = path.parent
    if path.is_symlink():
        folder = Path(os.path.realpath(path)).parent
    check_output_dir(folder, flag, shown=path)
    return path


def _ends_with_separator(path) -> str:
    """The separator a raw path argument ends with ("" where none, or where it is a Path, which keeps none): the
    user meant a folder, whose name alone Path keeps."""
    if not isinstance(path, str):
        return ""
    return next((sep for sep in (os.sep, os.altsep) if sep and path.endswith(sep)), "")


def written_in_place(path) -> bool:
    """Whether an output path is written through what it names, not as a file in a folder: a pipe, a terminal,
    /dev/null, or a descriptor (/dev/stdout >> log, /dev/fd/3). A file derived from its name beside it would land
    in /dev or /proc, not in a folder of the user's."""
    return is_special_file(Path(path)) or _file_descriptor_named(Path(path)) is not None


def is_special_file(path: Path) -> bool:
    """An existing output that is neither a file nor a folder once links are followed: a pipe, a terminal,
    /dev/null. It cannot be replaced by a rename, only written."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def check_output_dir(path, flag: str | None = "--out", shown=None) -> Path:
    """The folder counterpart of :func:`check_output_file`: the path's nearest existing ancestor (itself
    included) must be a folder."""
    from fewshot.errors import UserError

    path = Path(path)
    said = f"{flag} {shown or path}" if flag else f"the output {shown or path}"
    instead = f"choose another {flag}" if flag else "choose another place for it"
    for p in (path, *path.parents):
        if p.exists():
            # access(2) says yes to /dev/fd; the write failed (ENOENT) after the work
            if _DESCRIPTOR_FOLDER.fullmatch(os.path.realpath(p)):
                named = Path(shown or path)
                closed = (f"; descriptor {named.name} is not open (open it in the shell, e.g. `{named.name}> FILE`, "
                          f"or give a file name)" if named.parent == p and named.name.isdigit() else "")
                raise UserError(f"{said}: nothing can be created in {p}, which lists this process's open "
                                f"descriptors{closed}; {instead}.")
            if not p.is_dir():
                raise UserError(f"{said}: {p} is a file, not a folder.")
            if not os.access(p, os.W_OK | os.X_OK):  # access(2) also answers EROFS for a read-only mount
                raise UserError(f"{said}: the folder {p} cannot be written (a read-only file "
                                f"system or no permission); {instead}.")
            break
    return path


# /dev/fd, /proc/self/fd and /proc/PID/task/TID/fd once links are followed: open descriptors, no files to make
_DESCRIPTOR_FOLDER = re.compile(r"/proc/(?:self|thread-self|\d+)(?:/task/\d+)?/fd")


def resolved(path, what: str = "output folder") -> Path:
    """``path`` as the kernel will name it (symbolic links and `..` followed), or a UserError where it cannot be:
    a loop of links made resolve() raise RuntimeError, which the command reported as an internal error."""
    from fewshot.errors import UserError

    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as exc:
        raise UserError(f"the {what} '{path}' cannot be followed to a folder ({exc}): a loop of symbolic links? "
                        f"Give another path.") from None


def missing_parents(out: Path) -> list[Path]:
    """The folders above ``out`` that creating it makes, as the kernel will name them once made (resolved, deepest
    first, for an undo that removes children before their parents): `x/../y` makes x, which y's path does not
    name, and `link/x/../y` makes x inside the link's target. Each is judged on its resolved path: `x/../y/z` with
    no x does not make y where y is there (its written path only fails to exist until x is made)."""
    found = {resolved(p) for p in Path(out).parents}
    return sorted((p for p in found if not os.path.lexists(p)), key=lambda p: len(p.parts), reverse=True)


def links_inside(folder: Path, limit: int = 3) -> list[Path]:
    """Up to ``limit`` symbolic links inside ``folder`` (recursively, never following one; the folder itself may
    be a link, the user's choice). A missing or unreadable folder holds none that could be found."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs) + sorted(files):  # os.walk lists a link to a folder under dirs, not entering it
            if os.path.islink(os.path.join(root, name)):
                found.append(Path(root) / name)
                if len(found) >= limit:
                    return found
    return found


def refuse_links_in_run_dir(folder) -> None:
    """Refuse to write into an existing run folder that holds symbolic links: a run folder from elsewhere whose
    checkpoints/best.pt points at another file had fewshot replace that file with a checkpoint (metrics.json,
    log.jsonl: the same). atomic_write_bytes now replaces such a link instead, but appends and reads in the run
    folder would still go through one, and a run whose files are links to others' is not the run it seems."""
    from fewshot.errors import UserError, one_line

    folder = Path(folder)
    links = links_inside(folder, limit=4)
    if not links:
        return
    raise UserError(f"the run folder '{one_line(str(folder))}' holds symbolic links ({links_shown(folder, links)}). "
                    f"fewshot writes its checkpoints, metrics and logs there and would write through the links into "
                    f"what they point to; a run folder from elsewhere can use such links to overwrite other files. "
                    f"Replace each link by a copy of the file or folder it points to (a run folder on another disk: "
                    f"link the run folder itself, which is allowed), then run the command again.")


def links_shown(folder: Path, links: list[Path]) -> str:
    """`name -> target` for the first three of links_inside's ``links`` (limit 4), for a message."""
    from fewshot.errors import one_line

    shown = "; ".join(f"{one_line(str(p.relative_to(folder)))} -> {one_line(_link_target(p))}" for p in links[:3])
    return shown + (", and more" if len(links) > 3 else "")


def _link_target(link: Path) -> str:
    """Where a link points, or that it is gone (removed between the walk and the message)."""
    try:
        return os.readlink(link)
    except OSError:
        return "(gone)"


def new_file_mode(path: Path) -> int:
    """The mode an ordinary write would give: the replaced file's own, else 0666 less the umask. A link is replaced
    as a new file (its target's mode, setuid bits and all, is not this file's)."""
    try:
        info = os.lstat(path)
    except OSError:
        return 0o666 & ~_umask()
    return 0o666 & ~_umask() if stat.S_ISLNK(info.st_mode) else info.st_mode & 0o7777


def _umask() -> int:
    """The process umask, read without setting it where Linux shows it (os.umask can only read it by changing
    it, which a file created meanwhile by another thread would get)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def unshare_hard_link(path: Path) -> None:
    """Give a file that has other hard links a name of its own (copy, then rename over it) before it is appended
    to: a run copied with `cp -al` or `rsync --link-dest` shares its log.jsonl with the original, and resuming the
    copy appended its epochs to the original's log. Symbolic links are left to refuse_links_in_run_dir."""
    try:
        info = os.lstat(path)
    except OSError:
        return
    if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
        atomic_write_bytes(path, path.read_bytes())


def keep_copy(path: Path, copy_path: Path) -> None:
    """``copy_path`` becomes a copy of ``path``, which stays where it is (a reader never finds it missing): a
    hard link where the file system has them (the next atomic write of ``path`` replaces its name, not the
    shared file), else a byte copy; either way put in place by one rename."""
    folder = os.path.realpath(copy_path.parent)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(copy_path.name), suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        try:
            os.unlink(tmp)
            os.link(path, tmp)
        except OSError:  # no hard links here (some network and FAT file systems)
            shutil.copyfile(path, tmp)
            os.chmod(tmp, new_file_mode(copy_path))
        os.replace(tmp, copy_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def put_back(copy_path: Path, path: Path) -> None:
    """``path`` becomes what keep_copy kept in ``copy_path``, which goes. Where both names are still one file (a
    kill between keep_copy and the new write) rename does nothing at all (POSIX), and the copy stayed behind to be
    put back over a later, newer file."""
    try:
        same = os.path.samefile(copy_path, path)
    except OSError:
        same = False
    if same:
        copy_path.unlink()
    else:
        os.replace(copy_path, path)


def name_fits(path: Path) -> bool:
    """Whether ``path``'s last component is short enough for the file system of its nearest existing folder (a
    name derived from the user's, such as predict's `.routing.json` beside --out, can pass 255 bytes)."""
    folder = next((p for p in Path(path).parents if p.is_dir()), Path("."))
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    return len(os.fsencode(Path(path).name)) <= limit


TEMP_NAME_BYTES = 64  # of the output's name kept in its temp file's: `.NAME.XXXXXXXX.tmp` stays under 80 bytes


def temp_prefix(name: str) -> str:
    """``.NAME.`` for atomic_write_bytes's temp file, NAME cut to TEMP_NAME_BYTES bytes: the whole name plus 14
    characters made an output name over 241 bytes fail (ENAMETOOLONG) on the temp name, after all the work.
    Still `.something.XXXXXXXX.tmp` (run_dir.ATOMIC_TEMP, the engine's `.*.pt.*.tmp`), unique by mkstemp."""
    while len(os.fsencode(name)) > TEMP_NAME_BYTES:
        name = name[:-1]
    return f".{name}."


def atomic_write_bytes(path: Path, data: bytes, follow_links: bool = False) -> None:
    """Write via a temp file in the same folder, fsync, rename: a kill never leaves half a file. A symbolic
    link at ``path`` is replaced by the file, never written through: the files fewshot names itself (a run's
    checkpoints and logs, a report's PNGs) may come from a folder made elsewhere, whose links would have had
    fewshot overwrite what they point to. So is a pipe or device there: a FIFO at a run's last.pt hung the run.
    ``follow_links`` is for a path the user typed (`--out link.json`): the link's target is replaced, the link
    kept, a pipe or device (`--out /dev/stdout`) is written in place (opened by name: blocking, whatever the
    shell's descriptor is), and a link naming a descriptor that is a regular file (`--out /dev/stdout >> log`,
    `--out /dev/fd/3 3>> log`) is written through that descriptor, not replaced. An OSError names ``path`` (the
    write's own carried no name, or the temp file's, and a full disk was said without one)."""
    path = Path(path)
    fd = _file_descriptor_named(path) if follow_links else None  # written as the shell opened it: no folder needed
    if fd is None and (follow_links or not (path.is_symlink() or is_special_file(path))):
        path = check_output_file(path, None)  # a folder, or a file on the way: the user's path, not a bug
    elif fd is None:
        check_output_dir(path.parent, None, shown=path)  # the link or node itself is replaced, in its own folder
    # a pipe or device is judged through the link and written by the name given: realpath made `/dev/stdout` into
    # a pipe `/proc/PID/fd/pipe:[N]`, a name no one can open, and mkstemp beside it failed
    in_place = follow_links and fd is None and is_special_file(path)
    # a followed link to a file: its target, checked by check_output_file (its folder)
    written = Path(os.path.realpath(path)) if follow_links and not in_place and path.is_symlink() else path
    try:
        if fd is not None:
            _write_fd(fd, data)
        elif in_place:  # opened by the name given: open follows the link itself
            with open(path, "wb") as fh:
                fh.write(data)
        else:
            _atomic_write(written, data)
    except OSError as exc:
        if exc.filename is not None and not _is_temp_of(exc.filename, written):
            raise  # a folder on the way (mkdir's own name): already the right one
        raise OSError(exc.errno, exc.strerror or str(exc), os.fspath(path)) from exc


# /dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N (also thread-self, this process's PID and its tasks)
_FD_NAME = re.compile(r"/dev/(?:std(?P<std>out|err)|fd/(?P<dev>\d+))|"
                      r"/proc/(?:self|thread-self|(?P<pid>\d+))(?:/task/\d+)?/fd/(?P<proc>\d+)")


def _descriptor_in_name(name: str) -> int | None:
    match = _FD_NAME.fullmatch(name)
    if match is None or (match["pid"] is not None and int(match["pid"]) != os.getpid()):
        return None
    if match["std"]:
        return 1 if match["std"] == "out" else 2
    return int(match["dev"] or match["proc"])


def _file_descriptor_named(path: Path) -> int | None:
    """The descriptor N that the link ``path`` names on its way (/dev/stdout, /dev/fd/N, /proc/self/fd/N, or a link
    to one), where N is open for writing on a regular file (`--out /dev/stdout >> results.log`) or a socket, else
    None: a rename replaced results.log, its earlier lines gone, and a socket (a service's stdout into the journal)
    cannot be opened by name. Pipes and terminals are written by name (os.write on a shell's non-blocking pipe
    failed after 64 KiB), and a plain path that is stdout's file (`--out m.json > m.json`) is replaced as any
    other."""
    name, fd = os.path.abspath(path), None
    for _ in range(40):  # the kernel's own limit on links followed
        if not os.path.islink(name):
            return None
        fd = _descriptor_in_name(name)
        if fd is not None:
            break
        try:
            name = os.path.join(os.path.realpath(os.path.dirname(name)), os.readlink(name))
        except OSError:
            return None
    if fd is None:
        return None
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISSOCK(mode)) or not _writable(fd):
            return None
    except OSError:  # closed
        return None
    return fd


def _writable(fd: int) -> bool:
    """Whether ``fd`` was opened for writing (a `3< file` is not: its link is then the file's, replaced)."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): no /dev/fd either
        return True
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY


def _write_fd(fd: int, data: bytes) -> None:
    """``data`` written whole to ``fd``, after what Python's own streams hold for it (printed lines come first)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # None (pythonw), closed
            pass
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:  # a non-blocking socket that is full: wait until it takes more
            import select

            select.select([], [fd], [])


def _is_temp_of(name, written: Path) -> bool:
    """Whether ``name`` (an OSError's filename) is a temp file of atomic_write_bytes beside ``written``."""
    name = os.fspath(name)
    return os.path.basename(name).startswith(temp_prefix(written.name)) and name.endswith(".tmp")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # the folder the rename writes into: mkstemp normalises `link/../run` as text (run beside the link, not beside
    # its target, where the kernel puts it), and the temp file landed in another folder or none
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=os.path.realpath(path.parent))
    try:
        os.chmod(tmp, new_file_mode(path))  # mkstemp makes 0600: a report or submission others could not read
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, follow_links: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), follow_links)


RUN_JSON_DEPTH = 64  # fewshot's own JSON files (run folders, caches) nest a few levels


def loads_run_json(text: str):
    """json.loads for a file of a run folder, data root or cache, which may come from anywhere: JSON nested deeper
    than Python's stack (`[[[...]]]`, 200,000 deep) raised RecursionError, and compare, report and train --resume
    ended in an internal error; it is a ValueError here, as any other text that is not JSON fewshot wrote. So is
    JSON that parses but nests more than RUN_JSON_DEPTH deep (990 levels): the caller's own recursion over it
    (flatten_dotted, ==) overflowed instead."""
    from fewshot.config import deeper_than

    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to be read") from None
    # no file nests deeper than it has brackets: most are judged by a count, without walking them
    if text.count("[") + text.count("{") > RUN_JSON_DEPTH and deeper_than(data, RUN_JSON_DEPTH, len(text)):
        raise ValueError("nested too deeply to be read")
    return data


def write_json(path: Path, obj, follow_links: bool = False) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", follow_links)


def seed_everything(seed: int) -> None:
    """Seed the global RNGs that model code (init, dropout, drop-path) draws from."""
    random.seed(seed)
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (seed, epoch, step...): reproducible across processes."""
    h = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def make_generator(*parts: int) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(derive_seed(*parts))
    return gen


def resolve_device(name: str, given: str = "--device / train.device") -> torch.device:
    """``name`` as a torch device, or a UserError naming it as typed (``given``: where it may have come from)."""
    from fewshot.errors import UserError, one_line

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    said = one_line(repr(name))  # --device or train.device, as typed
    index = re.fullmatch(r"cuda(?::(0|[1-9]\d*))?", name)  # torch refuses `cuda:01`
    if index is None:  # `cudafoo`, `cuda:x` reached torch.device: a RuntimeError, an internal error
        raise UserError(f"unknown device {said} ({given}): use auto, cpu, cuda or cuda:N.")
    if not torch.cuda.is_available():
        raise UserError(f"device {said} was asked for ({given}), but no CUDA GPU is available here; "
                        f"use cpu or auto.")
    if index[1] is not None and int(index[1]) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UserError(f"device {said} was asked for ({given}), but this machine has {count} CUDA "
                        f"GPU(s), cuda:0 to cuda:{count - 1}; use one of them, cuda or auto.")
    return torch.device(name)
