"""The HTML page of ``specgrad diagnose``: one self-contained file (inline CSS and SVG, no
scripts, nothing fetched), readable offline."""

from __future__ import annotations

import html
import math
from typing import Any, Mapping, Optional

import pandas as pd

from .recommend import Recommendation

STUDY_URL = "https://arxiv.org/abs/2512.04299"
SPAN = 4.0  # the bars span gains from 2^-SPAN to 2^SPAN (log scale, 1 in the middle)
BAR_WIDTH = 320
COLORS = {"spectral": "#2e7d32", "euclidean": "#e07b00"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;
     padding:0 1em;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:.92em} .meta td{padding:0 1em 0 0}
.answer{font-size:1.15em;padding:.8em 1em;background:#f3f7f3;border-left:4px solid #2e7d32;margin:1em 0}
table.blocks,table.params,table.skipped{border-collapse:collapse;font-size:.88em;width:100%}
table.blocks td,table.blocks th,table.params td,table.params th,table.skipped td,table.skipped th{
     padding:3px 8px;border-bottom:1px solid #eee;text-align:left;vertical-align:middle}
td.num{text-align:right;font-variant-numeric:tabular-nums} td.name{font-family:ui-monospace,monospace}
.spectral{color:#2e7d32;font-weight:600} .euclidean{color:#e07b00;font-weight:600} .none{color:#888}
pre{background:#f6f8fa;padding:1em;border-radius:6px;overflow-x:auto;font-size:.9em}
.theory{background:#fafafa;padding:.6em 1em;border:1px solid #eee;border-radius:6px}
.legend{font-size:.85em;color:#555}
"""


def render_page(report: pd.DataFrame, recommendation: Recommendation, *, meta: Mapping[str, Any],
                skipped: Optional[Mapping[str, str]] = None, title: str = "Will Muon help this model?") -> str:  # fmt: skip
    """The page: what was run (``meta``: label -> value), the answer in one sentence, a bar
    of predicted gain per block of ``report`` (a :func:`~specgrad.diagnostics.diagnose`
    frame; every block has a row ``tr[data-block]``), the routing ``recommendation`` as
    ``split_params`` overrides and its per-parameter table, the ``skipped`` blocks with
    their reasons (default ``report.attrs["skipped"]``), and the one-step theory.

    Example:
        >>> frame = pd.DataFrame({"block": ["fc"], "shape": ["8x4"], "st_A": [1.5], "nr_G": [3.0],
        ...                       "predicted_gain": [2.0], "verdict": ["spectral"]})
        >>> from .recommend import recommend_routing
        >>> page = render_page(frame, recommend_routing(frame), meta={"model": "net"})
        >>> "data-block='fc'" in page and "<script" not in page
        True
    """
    skipped = dict(report.attrs.get("skipped", {}) if skipped is None else skipped)
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        "<table class=meta>" + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in meta.items()) + "</table>",
        f"<p class=answer id=answer>{_answer(report)}</p>",
        "<section id=gains><h2>Predicted gain per block</h2>",
        "<p class=legend>Bars: nr(G)/st(A) on a log scale from 1/16 to 16, 1 in the middle. Right of the line "
        "(green) the spectral step's guaranteed one-step decrease is larger; left (orange) the Euclidean one's.</p>",
        _blocks_table(report),
        "</section>",
        "<section id=routing><h2>Recommended routing</h2>",
        "<p>Paste into your training script (<code>from specgrad.optim import split_params</code>); parameters "
        "not listed keep the default routing:</p>",
        f"<pre id=overrides>{_e(recommendation.code())}</pre>",
        _params_table(recommendation.table),
        "</section>",
        "<section id=skipped><h2>Blocks it could not see</h2>",
        _skipped_table(skipped),
        "</section>",
        "<section id=theory><h2>Why: the one-step theory</h2><div class=theory>",
        "<p>For a block W fed by activations A (n rows), a Euclidean step is guaranteed to lower the loss by "
        "||G||<sub>F</sub><sup>2</sup>/(2L<sub>F</sub>) with L<sub>F</sub> ~ ||A||<sub>op</sub><sup>2</sup>/n, "
        "a spectral (Muon-type) step by ||G||<sub>*</sub><sup>2</sup>/(2L<sub>op</sub>) with "
        "L<sub>op</sub> ~ ||A||<sub>F</sub><sup>2</sup>/n.<br>",
        "Their ratio is nr(G)/st(A): the gradient's nuclear rank ||G||<sub>*</sub><sup>2</sup>/||G||<sub>F</sub>"
        "<sup>2</sup> over the activations' stable rank ||A||<sub>F</sub><sup>2</sup>/||A||<sub>op</sub><sup>2</sup>."
        "<br>",
        "So the spectral step wins where gradients are spread over many directions and the inputs concentrate in "
        "few (nr(G) &ge; st(A)); with nr(G) &ge; 2 st(A) it provably lands lower for least squares.</p>",
        f"<p>Davis &amp; Drusvyatskiy, <a href='{STUDY_URL}'>When do spectral gradient updates help in deep "
        "learning?</a>; reproduced in specgrad's <code>docs/reproductions/davis-drusvyatskiy.md</code>.</p>",
        "</div></section></body></html>",
    ]
    return "\n".join(parts)


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _answer(report: pd.DataFrame) -> str:
    gains = pd.to_numeric(report["predicted_gain"], errors="coerce")
    measured = gains[gains.notna()]
    if measured.empty:
        return "No block could be measured: see the blocks it could not see below."
    spectral = int((measured >= 1).sum())
    median = float(measured.median())
    lean = "a spectral optimizer such as Muon should help" if spectral * 2 > len(measured) else (
        "a Euclidean optimizer (AdamW) is favoured on most blocks")  # fmt: skip
    return (f"The spectral step is favoured on <b>{spectral} of {len(measured)}</b> measured blocks (median "
            f"nr(G)/st(A) = {median:.3g}): {lean}.")  # fmt: skip


def _bar(gain: float) -> str:
    """An SVG bar from the middle (gain 1) to ``log2(gain)``, clipped to the span."""
    w, mid = BAR_WIDTH, BAR_WIDTH / 2
    line = f"<line x1='{mid}' y1='0' x2='{mid}' y2='14' stroke='#444' stroke-width='1'/>"
    if not (gain > 0 and math.isfinite(gain)):
        return f"<svg width='{w}' height='14' role=img aria-label='no data'>{line}</svg>"
    x = max(-SPAN, min(SPAN, math.log2(gain))) / SPAN * mid
    color = COLORS["spectral" if gain >= 1 else "euclidean"]
    rect = f"<rect x='{min(mid, mid + x):.1f}' y='2' width='{abs(x):.1f}' height='10' fill='{color}'/>"
    return f"<svg width='{w}' height='14' role=img aria-label='gain {gain:.3g}'>{rect}{line}</svg>"


def _num(x: Any) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(x) else f"{x:.3g}"


def _blocks_table(report: pd.DataFrame) -> str:
    probe = "measured" in report
    head = ["block", "matrix", "st(A)", "nr(G)", "gain", "", "verdict"] + (["probe"] if probe else [])
    rows = ["<table class=blocks><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in report.itertuples():
        verdict = str(r.verdict)
        cls = verdict if verdict in COLORS else "none"
        cells = [f"<td class=name>{_e(r.block)}</td>", f"<td>{_e(r.shape)}</td>", f"<td class=num>{_num(r.st_A)}</td>",
                 f"<td class=num>{_num(r.nr_G)}</td>", f"<td class=num>{_num(r.predicted_gain)}</td>",
                 f"<td>{_bar(float(r.predicted_gain))}</td>", f"<td class={cls}>{_e(verdict)}</td>"]  # fmt: skip
        if probe:
            m = str(r.measured)
            note = getattr(r, "probe_note", "") or ""
            cells.append(f"<td class={m if m in COLORS else 'none'} title='{_e(note)}'>{_e(m)}</td>")
        rows.append(f"<tr data-block='{_e(r.block)}'>" + "".join(cells) + "</tr>")
    return "\n".join(rows) + "</table>"


def _params_table(table: pd.DataFrame) -> str:
    if table.empty:
        return ""
    head = ["parameter", "blocks", "gain", "margin", "probe", "default", "recommended", "why"]
    rows = ["<table class=params><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in table.itertuples():
        cls = {"spectral": "spectral", "adamw": "euclidean"}.get(r.rule, "none")
        rows.append(f"<tr data-parameter='{_e(r.parameter)}'><td class=name>{_e(r.parameter)}</td>"
                    f"<td class=num>{r.blocks}</td><td class=num>{_num(r.gain)}</td><td class=num>{_num(r.margin)}</td>"
                    f"<td>{_e(r.probe)}</td><td>{_e(r.default)}</td><td class={cls}>{_e(r.rule)}</td>"
                    f"<td>{_e(r.reason)}</td></tr>")  # fmt: skip
    return "\n".join(rows) + "</table>"


def _skipped_table(skipped: Mapping[str, str]) -> str:
    if not skipped:
        return "<p>None: the monitor saw every matrix of the model.</p>"
    rows = ["<table class=skipped><tr><th>block</th><th>why</th></tr>"]
    rows += [f"<tr data-skipped='{_e(k)}'><td class=name>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in skipped.items()]
    return "\n".join(rows) + "</table>"
