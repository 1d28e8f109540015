"""report.html: one self-contained page to attach to a ticket.

Why self-contained: a report that needs its folder beside it breaks the
moment it is attached or mailed. The page holds the same blocks as
summary.md (summary.blocks), every figure as an embedded PNG (base64; with
plot_results --link-figures, the figure files beside it instead), and
the run's metadata: machine, versions, settings (the ones every document
shares, and the ones that differ), and how the documents and the report were
made. Every piece of text from a document is escaped.
"""

from __future__ import annotations

import base64
import html
import json
import urllib.parse
from collections import Counter
from typing import Any, Iterable

from loadbench.analysis.frame import ignored_settings
from loadbench.terminal import human_bytes

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .85em; }
th, td { border: 1px solid #ddd; padding: .25em .55em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; text-align: left; }
td:first-child, th:first-child, td.text { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; }
.meta td { text-align: left; } code { background: #f3f3f3; padding: 0 .2em; }
"""
MAX_VALUES = 8   # distinct values listed per differing setting; more are counted


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _md_inline(text: str) -> str:
    """Escaped text, with the **bold** that summary lines use."""
    parts = _e(text).split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def _is_number(cell: str) -> bool:
    return cell.replace(".", "", 1).replace("%", "").replace("/", "").replace("-", "").isdigit() \
        or cell == "-"


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    out = [f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in header)
           + "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(
            f"<td>{_e(c)}</td>" if _is_number(str(c)) or i == 0 else f'<td class="text">{_e(c)}</td>'
            for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _src(figure: bytes | str) -> str:
    """PNG bytes are embedded; a name is a file beside the page (a published run's folder keeps
    its figures as files already, and in git twice they were 6 of its 18 MB)."""
    if isinstance(figure, str):
        return _e(urllib.parse.quote(figure))
    return f"data:image/png;base64,{base64.b64encode(figure).decode()}"


def _figures(items: list[tuple[str, bytes | str]]) -> str:
    return "\n".join(
        f'<figure><img alt="{_e(caption)}" src="{_src(figure)}"><figcaption>{_e(caption)}'
        "</figcaption></figure>" for caption, figure in items)


def page(blocks: list[tuple[Any, ...]], figures: dict[str, list[tuple[str, bytes | str]]],
         meta: list[tuple[str, list[list[str]]]]) -> str:
    """The whole page: the report's blocks, the figures where the blocks name them, metadata last."""
    title = next((b[1] for b in blocks if b[0] == "h1"), "loadbench report")
    body = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{_e(b[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_md_inline(b[1])}</p>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_md_inline(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "table":
            body.append(_table(b[1], b[2]))
        elif kind == "figures":
            body.append(_figures(figures.get(b[1], [])))
    body.append("<h2>Run metadata</h2>")
    for heading, rows in meta:
        if rows:
            body.append(f"<h3>{_e(heading)}</h3>" + _table(["what", "value"], rows, "meta"))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _distinct(values: Iterable[Any]) -> str:
    counts = Counter(str(v) for v in values if v not in (None, ""))
    if not counts:
        return "-"
    shown = [f"{v} ({n})" if len(counts) > 1 else v for v, n in counts.most_common(MAX_VALUES)]
    more = len(counts) - MAX_VALUES
    return ", ".join(shown) + (f", and {more} more" if more > 0 else "")


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def metadata(docs: list[dict[str, Any]], command: str) -> list[tuple[str, list[list[str]]]]:
    """Machine, versions, settings and commands, as (heading, [[what, value]]) tables."""
    ok = [d for d in docs if isinstance(d, dict)]
    trials = [t for d in ok for t in (d.get("trials") or []) if isinstance(t, dict)]
    times = sorted(str(x) for d in ok for x in (d.get("started_at"), d.get("finished_at")) if x)
    run = [["documents", f"{len(ok)} ({sum(d.get('status') == 'error' for d in ok)} with status error)"],
           ["trials", f"{len(trials)} ({sum(t.get('status') == 'ok' for t in trials)} verified)"],
           ["run ids", _distinct(d.get("run_id") for d in ok)],
           ["schemas", _distinct(d.get("schema") for d in ok)],
           ["first and last document times", f"{times[0]} to {times[-1]}" if times else "-"],
           ["nodes", _distinct(_get(d, "identity", "node") for d in ok)],
           ["pods", str(len({_get(d, "identity", "pod_uid") or _get(d, "identity", "pod")
                             or f"{_get(d, 'identity', 'hostname')}:{_get(d, 'identity', 'pid')}"
                             for d in ok}))]]
    machine = [["device", _distinct(_get(d, "device", "name") for d in ok)],
               ["device type", _distinct(_get(d, "device", "type") for d in ok)],
               ["driver", _distinct(_get(d, "device", "driver") for d in ok)],
               ["CUDA", _distinct(_get(d, "device", "cuda") for d in ok)],
               ["compute capability", _distinct(_get(d, "device", "capability") for d in ok)],
               ["device memory", _distinct(_bytes(_get(d, "device", "memory_bytes")) for d in ok)],
               ["platform", _distinct(_get(d, "machine", "platform") for d in ok)],
               ["CPU model", _distinct(v[:200] for d in ok
                                       if isinstance(v := _get(d, "machine", "cpu_model"), str))],
               ["NUMA nodes", _distinct(v for d in ok if type(v := _get(d, "machine", "numa_nodes")) is int)],
               ["CPUs", _distinct(_get(d, "machine", "cpu_count") for d in ok)],
               ["host memory", _distinct(_bytes(_get(d, "machine", "memory_bytes")) for d in ok)],
               ["model", _distinct(
                   f"{_get(d, 'model', 'id')} ({_get(d, 'model', 'dtype')}, "
                   f"{_bytes(_get(d, 'model', 'bytes'))})" for d in ok if isinstance(d.get('model'), dict))]]
    packages = sorted({k for d in ok for k in (d.get("versions") or {}) if isinstance(k, str)})
    versions = [[p, _distinct(_get(d, "versions", p) for d in ok)] for p in packages]
    keys = sorted({k for d in ok for k in (d.get("settings") or {}) if isinstance(k, str)})
    same, differ = [], []
    ignored = ignored_settings()
    for k in keys:
        if k in ("JOB_NAME", "JOB_COMPLETION_INDEX", "POD_NAME", "POD_UID", "NODE_NAME", "POD_NAMESPACE"):
            continue
        values = [json.dumps(_get(d, "settings", k), default=str) for d in ok]
        if len(set(values)) == 1:
            same.append([k, values[0]])
        else:
            why = "" if k not in ignored else " (does not set documents apart)"
            differ.append([k, _distinct(values) + why])
    commands = [["this report", command]]
    for d in ok:
        for key in ("command", "commands"):
            value = d.get(key) or _get(d, "machine", key)
            if value:
                commands.append([f"{d.get('label')} ({key})", str(value)[:500]])
    return [("Run", run), ("Machine", machine), ("Versions", versions),
            ("Settings shared by every document", same), ("Settings that differ", differ),
            ("Commands", _dedupe(commands))]


def _bytes(value: Any) -> str | None:
    return human_bytes(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _dedupe(rows: list[list[str]]) -> list[list[str]]:
    seen, out = set(), []
    for r in rows:
        if r[1] not in seen:
            seen.add(r[1])
            out.append(r)
    return out[:20]
