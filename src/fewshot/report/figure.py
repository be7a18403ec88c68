"""The plumbing every figure of report/plots.py shares: matplotlib's config folder (set before matplotlib is
imported), a headless Figure and its atomic PNG save, fonts and glyphs no font has, names drawn as written,
colours, legends, EMA smoothing, and the finish of a panel's axes (ticks, log-scale labels).

Apart from report/plots.py (which draws each figure) so that a figure's look is set in one place; the run budget
also draws with _figure.
"""

from __future__ import annotations

import atexit
import functools
import io
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from fewshot.errors import undecodable_escaped
from fewshot.process_state import said_once
from fewshot.utils import atomic_write_bytes

RAW_ALPHA = 0.35
DPI = 100
LEGEND_IN_AXES = 6  # legend entries drawn inside a panel; more go below the panels, in columns
LEGEND_MAX_NAMED = 30  # datasets named in a legend; past it the colours are too alike to look a name up


def _quiet_matplotlib_config_dir() -> None:
    """With HOME read-only, importing matplotlib printed two warning lines on every plotting command before it
    used a temporary folder anyway: give it a private temporary folder first (removed at exit, as it does)."""
    if os.environ.get("MPLCONFIGDIR") or "matplotlib" in sys.modules:
        return
    try:  # where matplotlib keeps its config and its font cache (linux: XDG folders; else ~/.matplotlib for both)
        linux = sys.platform.startswith(("linux", "freebsd"))
        wanted = [Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "matplotlib",
                  Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "matplotlib"] if linux else \
            [Path.home() / ".matplotlib"]
        for folder in wanted:
            folder.mkdir(parents=True, exist_ok=True)
        if all(os.access(folder, os.W_OK) for folder in wanted):
            return
    except (OSError, RuntimeError):  # RuntimeError: no home folder at all
        pass
    try:
        private = tempfile.mkdtemp(prefix="matplotlib-")
    except OSError:
        return  # matplotlib says why itself
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    os.environ["MPLCONFIGDIR"] = private


_quiet_matplotlib_config_dir()


def _figure(w: float, h: float, layout: str | None = "constrained"):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=DPI, layout=layout)


def _save(fig, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _escape_undecodable(fig)
    missing: list[str] = []
    with warnings.catch_warnings():
        # class or dataset names in scripts no installed font has (font_families) are drawn as boxes; matplotlib's
        # warning per missing glyph would flood stderr: one note per command says what to do instead. Only those
        # are taken aside: any other warning is shown (or not) as the filters say
        warnings.filterwarnings("always", message=MISSING_GLYPH.pattern, category=UserWarning)
        show = warnings.showwarning

        def glyphs_aside(message, category, filename, lineno, file=None, line=None):
            if MISSING_GLYPH.search(str(message)):
                missing.append(str(message))
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = glyphs_aside  # restored by catch_warnings
        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=fig.dpi, format="png")
    if missing:
        _say_missing_glyphs(missing)
    # by rename, as every other file of a run: savefig wrote in place, into the original of a hard-linked copy of a
    # run (`cp -al`), and a kill mid-write left half a PNG
    atomic_write_bytes(out, buffer.getvalue())
    return out


def _escape_undecodable(fig) -> None:
    """Texts drawn with the bytes of a name that is not UTF-8 escaped (a run folder `o\\xff` as the label
    `o\\xff`): matplotlib cannot draw a lone surrogate, and `fewshot report` of such a run failed in set_text."""
    from matplotlib.text import Text

    for text in fig.findobj(Text):  # titles, axis labels, legend entries: every text made before the draw
        shown = text.get_text()
        if isinstance(shown, str) and undecodable_escaped(shown) != shown:
            text.set_text(undecodable_escaped(shown))


# fonts for the glyphs the bundled DejaVu Sans lacks (class names in Chinese, Japanese, Korean, Arabic, Hebrew,
# Indic or Thai scripts were drawn as boxes): matplotlib falls back along the family list glyph by glyph
FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK KR", "Source Han Sans", "WenQuanYi Zen Hei",
                  "WenQuanYi Micro Hei", "Droid Sans Fallback", "Microsoft YaHei", "PingFang SC", "Hiragino Sans",
                  "Malgun Gothic", "Noto Sans Arabic", "Noto Sans Hebrew", "Noto Sans Devanagari", "Noto Sans Thai",
                  "Arial Unicode MS")


@functools.lru_cache(maxsize=1)
def font_families() -> tuple[str, ...]:
    """DejaVu Sans, then the fallback fonts installed here. Only installed ones are named: matplotlib logs a
    'findfont' line for every text drawn with a family it lacks. Its font list is cached the first time it runs
    (a font installed later is seen once that cache, e.g. ~/.cache/matplotlib/fontlist-*.json, is removed)."""
    from matplotlib import font_manager

    installed = {entry.name for entry in font_manager.fontManager.ttflist}
    return ("DejaVu Sans", *(name for name in FALLBACK_FONTS if name in installed))


MISSING_GLYPH = re.compile(r"Glyph (\d+) .*missing from")
_glyphs_said: set[str] = said_once(__name__, "_glyphs_said")


def _say_missing_glyphs(messages: list[str]) -> None:
    """Once per command: which characters the figures draw as boxes, and how to get them drawn."""
    # control and format characters (an escape code, a right-to-left override in a folder's name) are in no font:
    # no font to install draws them, and printed raw they would reach the terminal
    chars = [c for c in dict.fromkeys(chr(int(MISSING_GLYPH.search(m).group(1))) for m in messages)
             if c not in _glyphs_said and c.isprintable()]  # in the order drawn
    if _glyphs_said or not chars:
        _glyphs_said.update(chars)
        return
    _glyphs_said.update(chars)
    shown = "".join(chars[:12]) + ("..." if len(chars) > 12 else "")
    print(f"note: no installed font has some characters of the class or dataset names ({shown}): the figures draw "
          f"them as boxes (the HTML text shows them). Install a font that has them (e.g. Noto Sans CJK, on Debian "
          f"`apt install fonts-noto-cjk`) and remove matplotlib's font list (~/.cache/matplotlib/fontlist-*.json) "
          f"so that it finds the font.", file=sys.stderr, flush=True)


def _literal_text(plot):
    """Draw every text of the figure as written: matplotlib reads the span between two `$` in a label as
    maths, so a class folder named `cost$5_$10` failed the whole plot (and the run's or report's exit); and in
    whatever script it is written, where a font for it is installed (font_families)."""

    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        import matplotlib

        fonts = logging.getLogger("matplotlib.font_manager")
        level = fonts.level
        fonts.setLevel(max(level, logging.ERROR))  # a fallback font's "failed to find font weight normal" chatter
        try:
            with matplotlib.rc_context({"text.parse_math": False, "font.family": list(font_families())}):
                return plot(*args, **kwargs)
        finally:
            fonts.setLevel(level)

    return wrapper


@functools.lru_cache(maxsize=4096)
def _color(i: int, n: int = 10):
    """Colour i of n such that neighbours (datasets, runs, classes in their order) differ: tab10 while it lasts;
    tab20's ten dark hues then its ten light ones (in tab20's own order a dark hue and its light pair were
    neighbours, and looked alike); past 20, turbo sampled evenly but visited with a stride of ~0.38 n, so that
    neighbours lie far apart along the map."""
    from matplotlib import colormaps

    if n <= 10:
        return colormaps["tab10"](i % 10)
    if n <= 20:
        i %= 20
        return colormaps["tab20"](2 * i if i < 10 else 2 * (i - 10) + 1)
    step = max(1, round(0.382 * n))
    while math.gcd(step, n) != 1:
        step += 1
    return colormaps["turbo"](0.05 + 0.9 * ((i * step) % n) / (n - 1))


def _short(s: str, n: int = 28) -> str:
    """A name cut to n characters, its bytes that are not UTF-8 escaped (`o\\xff`): a tick label is drawn again
    from the string given at each draw, after _save escaped the texts it saw, and a surrogate failed it. Cut between
    escapes, never inside one (`…\\x…`)."""
    parts = [undecodable_escaped(c) for c in s]
    if sum(map(len, parts)) <= n:
        return "".join(parts)
    kept, width = [], 0
    for part in parts:
        if width + len(part) > n - 1:
            break
        kept.append(part)
        width += len(part)
    return "".join(kept) + "…"


def _legend_below(fig, handles, labels: list[str], title: str | None = None, fontsize: float = 7) -> None:
    """One legend below all panels, in as many columns as the figure's width holds; the figure grows by the
    legend's height (an in-axes legend of many entries hid the panel, and past ~15 datasets it was taller
    than the figure: constrained layout collapsed the axes and warned on stderr)."""
    longest = max(map(len, labels + [title or ""]))
    col_in = 0.6 + 0.58 * fontsize / 72 * min(longest, 30)  # handle, gaps and the text of the longest label
    ncol = max(1, min(len(labels), int((fig.get_figwidth() - 0.3) // col_in)))
    rows = math.ceil(len(labels) / ncol) + (1 if title else 0)
    fig.set_figheight(fig.get_figheight() + rows * 1.5 * fontsize / 72 + 0.15)
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=fontsize, frameon=False,
               title=title, title_fontsize=fontsize + 0.5)


def _dataset_legend(fig, ax, names: list[str], keys: list, what: str) -> str:
    """Legend of per-dataset curves: one entry per dataset colour, then `keys` ((handle, label): line styles,
    mean, ...). Small ones stay in the panel; more go below the panels; past LEGEND_MAX_NAMED datasets only
    the keys are shown. Returns a note for the panel's title ("" when every dataset is named)."""
    from matplotlib.lines import Line2D

    n = len(names)
    named = n <= LEGEND_MAX_NAMED
    items = [(Line2D([], [], color=_color(i, n), linewidth=1.8), _short(name)) for i, name in enumerate(names)] \
        if named else []
    items += keys
    if not items:
        return ""
    handles, labels = [h for h, _ in items], [lab for _, lab in items]
    if len(items) <= LEGEND_IN_AXES:
        ax.legend(handles, labels, fontsize=7, loc="best")
    else:
        _legend_below(fig, handles, labels, title=what + (" (colour: dataset)" if named else ""))
    return "" if named else f"\n{n} datasets, one colour each (too many to name)"


def smoothing_weight(n: int) -> float:
    """EMA weight that grows with the number of points: none for <= 4 points, at most 0.9."""
    return float(min(0.9, max(0.0, 1.0 - 4.0 / max(1, n))))


def ema_smooth(values, weight: float) -> list[float | None]:
    """Debiased exponential moving average (TensorBoard's smoothing); None / NaN entries are skipped."""
    out: list[float | None] = []
    acc, norm = 0.0, 0.0
    for v in values:
        if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
            out.append(None)
            continue
        acc = weight * acc + (1.0 - weight) * float(v)
        norm = weight * norm + (1.0 - weight)
        out.append(acc / norm if norm > 0 else float(v))
    return out


def plot_smoothed(ax, xs, ys, label: str | None = None, color=None, linestyle: str = "-", marker: str = "o",
                  hollow: bool = False, behind: bool = False) -> None:
    """Raw values as faint points joined by a thin line; the EMA-smoothed curve on top. ``hollow``: points that
    let another curve's show through; ``behind``: a mean over the datasets, drawn under their curves with hollow
    points (its solid black points hid the datasets')."""
    if not xs:
        return
    style = {"zorder": 1.5} if behind else {}
    if hollow or behind:
        style["markerfacecolor"] = "none"
    w = smoothing_weight(len(ys))
    if w == 0.0:  # too few points to smooth: the raw values themselves, clearly visible
        ax.plot(xs, ys, linestyle=linestyle, linewidth=1.8, marker=marker, markersize=4, color=color, label=label,
                **style)
        return
    ax.plot(xs, ys, linestyle="-", linewidth=0.6, marker=marker, markersize=3, alpha=RAW_ALPHA, color=color, **style)
    ax.plot(xs, ema_smooth(ys, w), linestyle=linestyle, linewidth=1.8, color=color, label=label, **style)


@functools.cache
def _distinct_log_formatter():
    """LogFormatter, labelling the ticks it labels with as many significant digits as tell them apart: within a
    narrow range (a learning rate of 2.9e-3 .. 3.5e-3) its one digit labelled six ticks "3e-03" and the next "4e-03".
    Only its public __call__ is overridden (its private _num_to_string may change). A class made on first use:
    matplotlib is imported only when a figure is drawn."""
    from matplotlib.ticker import LogFormatter

    class DistinctLogFormatter(LogFormatter):
        digits = 1
        most_digits = 8  # beyond: only the lowest and highest labelled ticks, with the digits that tell them apart
        only: tuple[float, ...] | None = None

        def set_locs(self, locs=None):
            super().set_locs(locs)
            # the major and minor ticks in view that get a label, so that no two labels on the axis read alike
            lo, hi = sorted(self.axis.get_view_interval())
            ticks = [float(x) for x in (*self.axis.get_majorticklocs(), *self.axis.get_minorticklocs())
                     if lo <= x <= hi and x > 0]
            labelled = sorted({x for x in ticks if LogFormatter.__call__(self, x)})
            self.only = None
            if not self._fit_digits(labelled):  # closer than most_digits tell: the two ends alone
                self.only = (labelled[0], labelled[-1])
                self._fit_digits(list(self.only), 17)

        def _fit_digits(self, labelled: list[float], most: int | None = None) -> bool:
            """The fewest digits that tell ``labelled`` apart (True), else the most allowed (False)."""
            for digits in range(1, (most or self.most_digits) + 1):
                self.digits = digits
                if len({self._text(x) for x in labelled}) == len(labelled):
                    return True
            return False

        def _text(self, x: float) -> str:
            """1 .. 10000 as plain numbers (10, 20, 2.5), as LogFormatter writes them; others as 3.2e-03."""
            if 1 <= x <= 10000:
                text = f"{x:.{self.digits}g}"
                return f"{float(text):.0f}" if "e" in text else text  # 20, not .1g's 2e+01
            return f"{x:.{self.digits - 1}e}"

        def __call__(self, x, pos=None):
            label = super().__call__(x, pos)  # "" where LogFormatter labels no tick
            if not label or x <= 0:  # no label, or a symlog axis's 0: LogFormatter's own
                return label
            if self.only is not None and float(x) not in self.only:
                return ""
            return self.fix_minus(self._text(float(x)))

    return DistinctLogFormatter


def _finish(ax, title: str, ylabel: str | None = None, legend: bool = False, log: bool = False) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch", fontsize=8)
    lo, hi = ax.get_xlim()
    if hi - lo < 2:  # one or two epochs: whole-epoch ticks (not 0.945 ... 1.05), points off the frame
        ax.set_xlim(lo - 0.5, hi + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if log:
        ax.set_yscale("log")
        # text.parse_math is off in these figures (`_literal_text`), so the default mathtext tick labels
        # ($\mathdefault{10^{-3}}$) would be drawn as their source: plain "1e-03" labels instead, with as many
        # digits as tell them apart
        formatter = _distinct_log_formatter()
        ax.yaxis.set_major_formatter(formatter())
        ax.yaxis.set_minor_formatter(formatter())
        ax.tick_params(axis="y", which="minor", labelsize=7)  # a range within one decade is labelled by minor ticks
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")


def _share_epochs(axes) -> None:
    """One epoch range on every panel that drew something: a val panel of one evaluation (epoch 10) spanned 9-11
    next to panels spanning 1-10. Padded as _finish pads one or two epochs, else by matplotlib's 5 % margin."""
    spans = [ax.dataLim.intervalx for ax in axes if ax.has_data()]
    if not spans:
        return
    lo, hi = min(float(a) for a, _ in spans), max(float(b) for _, b in spans)
    pad = 0.5 if hi - lo < 2 else 0.05 * (hi - lo)
    for ax in axes:
        if ax.has_data():
            ax.set_xlim(lo - pad, hi + pad)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="0.4", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
