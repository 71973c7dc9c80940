"""The HTML report: every study, figure and claim of a results folder on one page.

``build_report(folder)`` reads ``folder/<experiment>/result.json`` (and ``error.json`` for
experiments that failed) and writes ``folder/report.html``. Figures are referenced by
relative paths, so the folder can be zipped and opened anywhere without a network.
"""

from __future__ import annotations

import html
import json
import os
import platform
import time
from pathlib import Path
from typing import Optional

from . import __version__
from .experiments.catalog import STUDIES, Study
from .experiments.registry import CLAIM_KINDS
from .experiments.runner import write_text

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222 }
h1 { margin-bottom: 0.2em } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em }
table { border-collapse: collapse; margin: 0.8em 0 } td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left }
th { background: #f4f4f4 } td.num { text-align: right; font-variant-numeric: tabular-nums }
.pass { color: #17692b; font-weight: 600 } .fail { color: #b00020; font-weight: 600 } .missing { color: #8a6d00; font-weight: 600 } .na { color: #555; font-weight: 600 }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0 } img { max-width: 100%; border: 1px solid #eee }
pre { background: #fff4f4; padding: 0.6em; overflow-x: auto; font-size: 12px } .muted { color: #666 }
#broken { display: none; background: #b00020; color: white; padding: 0.5em }
"""

# Marks on <body> how many figures decoded (data-images="ok/total") and shows a banner if
# any did not, so a broken figure is visible to a reader and checkable by a browser test.
CHECK_IMAGES = """
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.images = ok + '/' + imgs.length;
  if (ok < imgs.length) { var b = document.getElementById('broken'); b.style.display = 'block';
    b.textContent = (imgs.length - ok) + ' figure(s) failed to load'; }
});
"""


def _e(x) -> str:
    return html.escape(str(x))


def _num(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return _e(v)


def load_results(folder: Path) -> dict[str, dict]:
    """``{experiment: result dict}`` for every subfolder of ``folder`` with a result: its
    ``result.json``, ``{"error": ...}`` (its ``error.json``) when the experiment failed
    since, or ``{"unreadable": {"file": ..., "message": ...}}`` when that file cannot be
    read or is not a result, so one bad file marks one experiment, not the report."""
    out = {}
    for sub in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        result, error = sub / "result.json", sub / "error.json"
        if error.exists() and (not result.exists() or error.stat().st_mtime > result.stat().st_mtime):
            out[sub.name] = _read(error, _check_error, lambda obj: {"error": obj})
        elif result.exists():
            out[sub.name] = _read(result, _check_result, lambda obj: obj)
    return out


def unreadable(results: dict[str, dict]) -> dict[str, dict]:
    """The entries of :func:`load_results` whose file could not be read:
    ``{experiment: {"file": path, "message": why}}``."""
    return {name: r["unreadable"] for name, r in results.items() if "unreadable" in r}


def _read(path: Path, check, wrap) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        check(obj)
    except OSError as e:
        return {"unreadable": {"file": str(path), "message": e.strerror or str(e)}}
    except ValueError as e:  # not JSON, not UTF-8, or not the shape of a result
        return {"unreadable": {"file": str(path), "message": str(e)}}
    return wrap(obj)


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def _check_error(obj) -> None:
    _expect(isinstance(obj, dict) and isinstance(obj.get("message", ""), str), "not an error record")


def _check_result(obj) -> None:
    """Raise ``ValueError`` unless ``obj`` has the fields of a result file that the page shows."""
    _expect(isinstance(obj, dict), "not a JSON object")
    for key, typ in (("claims", list), ("summary", dict), ("series", dict), ("figures", list), ("env", dict)):
        _expect(isinstance(obj.get(key, typ()), typ), f"{key!r} is not a {typ.__name__}")
    for c in obj.get("claims", []):
        _expect(isinstance(c, dict) and {"id", "statement", "passed", "value", "threshold"} <= set(c),
                "a claim lacks one of id, statement, passed, value, threshold")
    _expect(all(isinstance(f, str) for f in obj.get("figures", [])), "a figure is not a file name")
    seconds = obj.get("env", {}).get("seconds", 0.0)
    _expect(seconds is None or isinstance(seconds, (int, float)), "env.seconds is not a number")


def _status(result: Optional[dict]) -> tuple[str, str]:
    if result is None:
        return "missing", "not run"
    if "unreadable" in result:
        return "fail", "unreadable"
    if "error" in result:
        return "fail", "error"
    claims = result.get("claims", [])
    failed = sum(c["passed"] is False for c in claims)
    assessed = sum(c["passed"] is not None for c in claims)
    return ("fail", f"{failed}/{assessed} claims fail") if failed else ("pass", f"{assessed} claims pass")


def _verdict(claim: dict) -> tuple[str, str]:
    """The CSS class and word of a claim's status: PASS, FAIL, or N/A (not assessed)."""
    if claim["passed"] is None:
        return "na", "N/A"
    return ("pass", "PASS") if claim["passed"] else ("fail", "FAIL")


def _kind(claim: dict) -> str:
    return claim.get("kind", "study")  # results written before kinds existed are study claims


def _claims_table(name: str, result: dict) -> str:
    rows = []
    for c in result.get("claims", []):
        op = ">=" if c.get("direction", "min") == "min" else "<="
        cls, word = _verdict(c)
        statement = _e(c["statement"]) + (f"<br><span class=muted>not assessed: {_e(c['reason'])}</span>"
                                          if c.get("reason") else "")  # fmt: skip
        rows.append(f"<tr data-claim='{_e(name)}:{_e(c['id'])}'><td>{_e(c['id'])}</td><td>{_e(_kind(c))}</td>"
                    f"<td>{statement}</td><td class=num>{_num(c['value'])}</td>"
                    f"<td class=num>{op} {_num(c['threshold'])}</td><td class={cls}>{word}</td></tr>")  # fmt: skip
    if not rows:
        return "<p class=muted>No claims.</p>"
    head = "<tr><th>claim</th><th>kind</th><th>statement</th><th>measured</th><th>threshold</th><th>status</th></tr>"
    return f"<table class=claims>{head}{''.join(rows)}</table>"


def _experiment_section(name: str, result: Optional[dict]) -> str:
    if result is None:
        return f"<h3 id='{_e(name)}'>{_e(name)}</h3><p class=missing>Not run.</p>"
    if "unreadable" in result:
        bad = result["unreadable"]
        return (f"<h3 id='{_e(name)}'>{_e(name)}</h3><p class=fail>Unreadable: {_e(bad['file'])}: "
                f"{_e(bad['message'])}</p><p class=muted>Rerun the experiment (the same command resumes "
                f"from its saved seeds) or restore the file.</p>")  # fmt: skip
    if "error" in result:
        err = result["error"]
        return (f"<h3 id='{_e(name)}'>{_e(name)}</h3><p class=fail>Failed: {_e(err.get('message', ''))}</p>"
                f"<pre>{_e(err.get('traceback', ''))}</pre>")  # fmt: skip
    env = result.get("env", {})
    figures = "".join(
        f"<figure><img src='{_e(name)}/{_e(f)}' alt='{_e(name)}: {_e(f)}'><figcaption class=muted>{_e(f)}</figcaption></figure>"
        for f in result.get("figures", [])
    )  # fmt: skip
    summary = "".join(f"<tr><td>{_e(k)}</td><td class=num>{_num(v)}</td></tr>" for k, v in result.get("summary", {}).items()
                      if not isinstance(v, (dict, list)))  # fmt: skip
    return (
        f"<h3 id='{_e(name)}'>{_e(name)} <span class=muted>(preset {_e(result.get('preset'))}, "
        f"{_num(env.get('seconds'))} s, {len(_seeds(result))} seed(s))</span></h3>"
        f"{_claims_table(name, result)}{figures}"
        f"<details><summary>summary numbers</summary><table>{summary}</table></details>"
    )


def _seeds(result: dict) -> set[str]:
    return {k.rsplit("/", 1)[-1] for k in result.get("series", {})}


def render(results: dict[str, dict], studies: tuple[Study, ...] = STUDIES) -> str:
    """The report's HTML for ``results`` (see :func:`load_results`)."""
    known = {n for s in studies for n in s.experiments}
    others = tuple(sorted(n for n in results if n not in known))
    sections = list(studies) + ([Study("other", "Other experiments", "", others)] if others else [])
    summary_rows, body = [], []
    tally = {kind: {"pass": 0, "fail": 0, "na": 0} for kind in CLAIM_KINDS}
    for study in sections:
        parts = [f"<h2 id='study-{_e(study.key)}'>{_e(study.title)}</h2>"]
        if study.claim:
            parts.append(f"<p><b>The study says:</b> {_e(study.claim)}</p>")
        if study.doc:
            parts.append(f"<p class=muted>Discussion: docs/reproductions/{_e(study.doc)}</p>")
        rows = []
        for name in study.experiments:
            result = results.get(name)
            parts.append(_experiment_section(name, result))
            cls, text = _status(result)
            claims = result.get("claims", []) if result and not {"error", "unreadable"} & set(result) else []
            link = f"<td><a href='#{_e(name)}'>{_e(name)}</a></td>"
            if not claims:
                rows.append(f"{link}<td>-</td><td>-</td><td class={cls}>{_e(text)}</td></tr>")
            for c in claims:
                cc, word = _verdict(c)
                rows.append(f"{link}<td>{_e(c['id'])}</td><td>{_e(_kind(c))}</td><td class={cc}>{word}</td></tr>")
                tally[_kind(c)][cc] += 1
        # the study's name once, spanning its rows (the title without its citation)
        head = f"<td rowspan={len(rows)}><a href='#study-{_e(study.key)}'>{_e(study.title.split(' (')[0])}</a></td>"
        summary_rows += ["<tr>" + (head if k == 0 else "") + row for k, row in enumerate(rows)]
        body.append("".join(parts))
    envs = [r["env"] for r in results.values() if "env" in r]
    devices = sorted({e.get("device", "?") for e in envs}) or ["-"]
    torch_versions = sorted({e.get("torch", "?") for e in envs}) or ["-"]
    env_rows = {
        "specgrad": __version__, "torch": ", ".join(torch_versions), "device": ", ".join(devices),
        "python": platform.python_version(), "platform": platform.platform(),
        "built": time.strftime("%Y-%m-%d %H:%M:%S"),
        "total seconds": _num(sum(e.get("seconds") or 0.0 for e in envs)),
    }  # fmt: skip
    counts = "; ".join(f"{kind} claims: {t['pass']} pass, {t['fail']} fail, {t['na']} not assessed"
                       for kind, t in tally.items() if sum(t.values()))  # fmt: skip
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>specgrad report</title><style>{CSS}</style></head>
<body><div id=broken></div>
<h1>specgrad: when do spectral updates help?</h1>
<p class=muted id=counts>{_e(counts) or "No claims."} Study claims test a statement of a study; self-consistency checks test a closed form against its own simulation; sanity checks hold for any correct code. Every number below is computed from the raw series in the result files next to this page.</p>
<h2>Summary</h2>
<table id=summary><tr><th>study</th><th>experiment</th><th>claim</th><th>kind</th><th>status</th></tr>{''.join(summary_rows)}</table>
<h2>Environment</h2>
<table>{''.join(f'<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>' for k, v in env_rows.items())}</table>
{''.join(body)}
<script>{CHECK_IMAGES}</script>
</body></html>
"""


def build_report(folder: os.PathLike | str, results: Optional[dict[str, dict]] = None) -> Path:
    """Write ``folder/report.html`` from ``results`` (default: :func:`load_results` of
    ``folder``) and return its path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"no results folder at {str(folder)!r}")
    path = folder / "report.html"
    write_text(path, render(load_results(folder) if results is None else results))
    return path
