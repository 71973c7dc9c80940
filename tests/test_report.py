"""The HTML report: content from result files, failures shown, and a real browser check."""

import shutil

import pytest

from specgrad.experiments import run_experiment, write_json
from specgrad.experiments.catalog import load_all
from specgrad.experiments.runner import reproduce
from specgrad.report import build_report, load_results, unreadable

load_all()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    run_experiment("char-lm", "smoke", out, progress=False)
    write_json(out / "broken" / "error.json", {"message": "RuntimeError: boom", "traceback": "Traceback...\nRuntimeError: boom"})
    return out


def test_report_lists_every_claim_and_shows_failures(results):
    page = build_report(results).read_text()
    loaded = load_results(results)
    claims = [c for r in loaded.values() if "claims" in r for c in r["claims"]]
    assert len(claims) == 2
    for c in claims:
        assert f"data-claim='char-lm:{c['id']}'" in page
    assert "RuntimeError: boom" in page and "Other experiments" in page
    assert "<img src='char-lm/val_loss.png'" in page  # relative: the folder can be zipped
    assert "http" not in page.split("<body")[1]  # nothing fetched from a network


def test_one_corrupt_result_among_good_ones_marks_only_that_experiment(results, tmp_path):
    folder = tmp_path / "results"
    shutil.copytree(results, folder)
    bad = {
        "random-features": '{"experiment": "random-features", "claims": [{"id": "x"',  # truncated
        "phase-retrieval": "[1, 2, 3]",  # JSON, but not a result
        "hybrid": '{"claims": [{"id": "c", "statement": "s"}]}',  # a claim without its verdict
        "init-stable-rank": b"\xff\xfe not text",
    }
    for name, content in bad.items():
        path = folder / name / "result.json"
        path.parent.mkdir()
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    (folder / "lm-spectra").mkdir()
    (folder / "lm-spectra" / "error.json").write_text('{"message": ')
    loaded = load_results(folder)
    assert set(unreadable(loaded)) == set(bad) | {"lm-spectra"}
    assert loaded["char-lm"]["claims"] and loaded["broken"]["error"]["message"] == "RuntimeError: boom"
    page = build_report(folder).read_text()
    for c in loaded["char-lm"]["claims"]:  # the good result is all there
        assert f"data-claim='char-lm:{c['id']}'" in page
    assert "RuntimeError: boom" in page
    for name in (*bad, "lm-spectra"):
        bad_file = folder / name / ("error.json" if name == "lm-spectra" else "result.json")
        assert f"Unreadable: {bad_file}" in page
        assert f"<a href='#{name}'>{name}</a></td><td>-</td><td>-</td><td class=fail>unreadable</td>" in page


def test_claim_kinds_are_counted_apart_and_not_assessed_claims_say_why(results, tmp_path):
    from specgrad.experiments.registry import Claim

    folder = tmp_path / "results"
    shutil.copytree(results, folder)
    claims = [
        Claim("closed-form", "the closed form matches its simulation", 1e-9, 1e-6, "max", kind="self-consistency"),
        Claim("quadratic", "the loss is quadratic near zero", 0.1, 0.0, kind="sanity"),
        Claim("theorem", "the study's statement", -1.0, 0.0),
        Claim.not_assessed("needs-size", "the gap grows", "needs at least 10 classes"),
    ]
    write_json(folder / "made-up" / "result.json", {"experiment": "made-up", "claims": [c.to_dict() for c in claims]})
    loaded = load_results(folder)
    assert [c["passed"] for c in loaded["made-up"]["claims"]] == [True, True, False, None]
    page = build_report(folder).read_text()
    assert "self-consistency claims: 1 pass, 0 fail, 0 not assessed" in page
    assert "sanity claims: 1 pass, 0 fail, 0 not assessed" in page
    lm = [c["passed"] for c in loaded["char-lm"]["claims"]]
    assert f"study claims: {lm.count(True)} pass, {lm.count(False) + 1} fail, 1 not assessed" in page
    assert "not assessed: needs at least 10 classes" in page and "class=na>N/A<" in page
    with pytest.raises(ValueError, match="reason"):
        Claim("x", "s", None, 0.0)
    with pytest.raises(ValueError, match="kind"):
        Claim("x", "s", 1.0, 0.0, kind="vibes")


def test_reproduce_records_a_failing_experiment_and_goes_on(tmp_path, monkeypatch):
    from specgrad.experiments import EXPERIMENTS

    def explode(cfg, seed, ctx):
        raise RuntimeError("seed exploded")

    monkeypatch.setattr(EXPERIMENTS["char-lm"], "run_seed", explode)
    status = reproduce("smoke", tmp_path, only=["char-lm"], progress=False)
    assert status["char-lm"].startswith("error: RuntimeError: seed exploded")
    page = build_report(tmp_path).read_text()
    assert "seed exploded" in page and "class=fail" in page


def test_report_in_a_real_browser(results, browser, tmp_path):
    """Headless Chromium loads the page from disk: every figure decodes and the claims
    table has a row per claim. In CI (CI=true) a missing browser is a failure, not a skip."""
    from selenium.webdriver.support.ui import WebDriverWait

    page = build_report(results)
    browser.get(page.resolve().as_uri())
    WebDriverWait(browser, 20).until(lambda b: b.execute_script("return document.body.dataset.images"))
    widths = browser.execute_script("return Array.from(document.images).map(i => i.naturalWidth)")
    assert widths and all(w > 0 for w in widths)
    assert browser.execute_script("return document.body.dataset.images") == f"{len(widths)}/{len(widths)}"
    rows = browser.execute_script("return document.querySelectorAll('table.claims tr[data-claim]').length")
    n_claims = sum(len(r.get("claims", [])) for r in load_results(results).values())
    assert rows == n_claims
    shot = tmp_path / "report.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
