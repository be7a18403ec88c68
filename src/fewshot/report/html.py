"""A self-contained HTML page: inline CSS, PNGs beside index.html referenced by relative paths,
no scripts and nothing fetched from the network."""

from __future__ import annotations

import html

CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg2:#f6f8fa; --bad:#d1242f; --good:#1a7f37; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; color: var(--fg);
       margin: 0 auto; padding: 20px 28px 60px; max-width: 1380px; }
h1 { font-size: 24px; margin: 4px 0 6px; }
h2 { font-size: 19px; margin: 34px 0 8px; padding-top: 10px; border-top: 2px solid var(--line); }
h3 { font-size: 15px; margin: 22px 0 6px; }
h4 { font-size: 13.5px; margin: 14px 0 4px; }
p { margin: 6px 0; }
code { font: 12.5px ui-monospace, "DejaVu Sans Mono", Menlo, monospace; background: var(--bg2); padding: 1px 4px;
       border-radius: 4px; }
.sub { color: var(--muted); }
.caption { color: var(--muted); font-size: 12.5px; margin: 4px 0 10px; max-width: 1100px; }
.note { background: #fff8c5; border: 1px solid #eac54f; border-radius: 6px; padding: 6px 10px; margin: 8px 0;
        font-size: 13px; max-width: 1100px; }
nav.toc { background: var(--bg2); border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px;
          margin: 12px 0; display: inline-block; }
nav.toc ul { margin: 4px 0; padding-left: 18px; }
.tablewrap { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; white-space: nowrap; }
th { background: var(--bg2); font-weight: 600; white-space: normal; vertical-align: bottom; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.txt, th.txt { text-align: left; }
tr.em td { font-weight: 600; background: #fbfbfc; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; margin: 8px 0; font-size: 13px; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; }
figure { margin: 10px 0 16px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; background: #fff; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 3px; max-width: 1100px; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 8px 22px;
         align-items: start; }
.bad { color: var(--bad); font-weight: 600; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


def e(text) -> str:
    return html.escape(str(text))


def figure(src: str, caption: str, alt: str | None = None) -> str:
    return (f'<figure><img src="{e(src)}" alt="{e(alt or caption)}">'
            f"<figcaption>{e(caption)}</figcaption></figure>")


def note(text: str) -> str:
    return f'<p class="note">{e(text)}</p>'


def facts(items: list[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in items) + "</dl>"


def toc(entries: list[tuple[str, str]]) -> str:
    return ('<nav class="toc"><strong>Contents</strong><ul>'
            + "".join(f'<li><a href="#{e(a)}">{e(t)}</a></li>' for a, t in entries) + "</ul></nav>")


def page(title: str, subtitle: str, body: list[str], footer: str) -> str:
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="sub">{e(subtitle)}</p>',
        *body,
        f"<footer>{e(footer)}</footer>",
        "</body>",
        "</html>",
        "",
    ])
