"""``specgrad diagnose``: transformers configs and checkpoints, factories, text and tensor
files; the table, the page in a real browser, and one-line errors that leave nothing behind."""

import numpy as np
import pytest
import torch

from specgrad import cli
from specgrad.diagnostics import SpectralMonitor
from specgrad.diagnostics.load import LoadError, load_batches, load_model
from specgrad.optim import split_params

transformers = pytest.importorskip("transformers")

TEXT = "the quick brown fox jumps over the lazy dog; " * 40 + "Pack my box with five dozen liquor jugs. " * 40
FAST = ["--steps", "2", "--batch-size", "2", "--seq-len", "16"]

FACTORY = '''
import torch
from torch import nn


class TinyLM(nn.Module):
    def __init__(self, vocab=300, width=24):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.hidden = nn.Linear(width, width)
        self.grouped = nn.Conv1d(width, width, 1, groups=2)  # a matrix the monitor cannot see
        self.head = nn.Linear(width, vocab)

    def forward(self, idx):
        h = torch.relu(self.hidden(self.emb(idx)))
        h = h + self.grouped(h.transpose(1, 2)).transpose(1, 2)
        return self.head(h)


def make_model():
    torch.manual_seed(0)
    return TinyLM()


def make_mlp():
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))


def make_batches():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 6, generator=g), torch.randn(16, 2, generator=g)) for _ in range(3)]
'''


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("diagnose")
    gpt2 = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=300, n_positions=64)
    gpt2.save_pretrained(root / "gpt2")
    llama = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=300, max_position_embeddings=64)  # fmt: skip
    llama.save_pretrained(root / "llama")
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(gpt2).save_pretrained(root / "checkpoint")
    _tokenizer(TEXT).save_pretrained(root / "checkpoint")
    (root / "text.txt").write_text(TEXT)
    torch.save(torch.randint(300, (2000,)), root / "ids.pt")
    np.save(root / "seqs.npy", np.random.default_rng(0).integers(0, 300, (12, 17)))
    (root / "factories.py").write_text(FACTORY)
    return root


def _tokenizer(text):
    """A byte-level BPE tokenizer trained here (nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=290, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok)


def _run(args, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")  # rich: no block name cut
    rc = cli.main(["diagnose", *args])
    return rc, *capsys.readouterr()


CASES = {
    "gpt2-config+text": ("gpt2/config.json", "text.txt"),
    "llama-folder+ids": ("llama", "ids.pt"),
    "checkpoint+tokenizer+text": ("checkpoint", "text.txt"),
    "gpt2+sequences": ("gpt2", "seqs.npy"),
    "factory+text": ("factories.py:make_model", "text.txt"),
    "factory+factory": ("factories.py:make_mlp", "factories.py:make_batches"),
    "factory+synthetic": ("factories.py:make_mlp", None),
}
PROBE_ALL = {"factory+factory"}


@pytest.fixture(scope="module")
def pages(inputs):
    return {}


@pytest.mark.parametrize("case", list(CASES))
def test_diagnose_prints_a_row_per_routed_matrix_and_writes_the_page(case, inputs, pages, capsys, monkeypatch):
    model, data = CASES[case]
    out = inputs / f"{case}.html"
    args = ["--model", str(inputs / model), "--out", str(out), *FAST] + (["--data", str(inputs / data)] if data else [])
    args += ["--probe", "all"] if case in PROBE_ALL else []
    rc, stdout, stderr = _run(args, capsys, monkeypatch)
    assert rc == 0, stderr
    m = load_model(str(inputs / model)).model
    routed = {r.name for r in split_params(m).routes if r.rule == "spectral"}
    with SpectralMonitor(m) as mon:
        blocks = mon.blocks
        coverage = mon.coverage()
    assert routed <= set(coverage["parameter"])  # every routed matrix is measured or said to be skipped ...
    table = stdout.split("recommended routing")[0]
    for b in blocks:  # ... and has its row
        assert f" {b} " in table, b
    assert "split_params(model" in stdout
    probed = [line for line in table.splitlines() if any(f" {b} " in line for b in blocks)]
    assert any(" spectral " in line.split("│")[-3] or " euclidean " in line.split("│")[-3] for line in probed)
    page = out.read_text()
    for b in blocks:
        assert f"data-block='{b}'" in page
    assert "<script" not in page and "http://" not in page
    pages[case] = (out, blocks)


def test_factory_model_lists_what_it_cannot_see(inputs, capsys, monkeypatch):
    out = inputs / "skipped.html"
    rc, stdout, _ = _run(["--model", str(inputs / "factories.py:make_model"), "--out", str(out), "--probe", "off", *FAST],
                         capsys, monkeypatch)  # fmt: skip
    assert rc == 0 and "grouped convolution" in out.read_text() and "1 matrices not measured" in stdout


def test_text_is_bytes_without_a_tokenizer_and_tokens_with_one(inputs):
    plain = load_batches(str(inputs / "text.txt"), load_model(str(inputs / "gpt2")), steps=1)
    assert "UTF-8 bytes" in plain.source and f"{len(TEXT.encode()):,}" in plain.source
    tokenized = load_batches(str(inputs / "text.txt"), load_model(str(inputs / "checkpoint")), steps=1)
    assert "UTF-8 bytes" not in tokenized.source and "tokens" in tokenized.source
    assert int(tokenized.source.split()[1].replace(",", "")) < len(TEXT.encode())  # merged by the BPE


def test_checkpoint_weights_are_loaded(inputs):
    saved = transformers.GPT2LMHeadModel.from_pretrained(str(inputs / "checkpoint"))
    loaded = load_model(str(inputs / "checkpoint"), seed=123).model
    assert torch.equal(saved.transformer.h[0].mlp.c_fc.weight, loaded.transformer.h[0].mlp.c_fc.weight)


BAD = {
    "missing model": (["--model", "{root}/nope/config.json"], "no model config at"),
    "missing factory module": (["--model", "no_such_module_xyz:make"], "cannot import no_such_module_xyz"),
    "unknown model type": (["--model", "{root}/bad_type.json"], "cannot build a config"),
    "not a causal LM": (["--model", "{root}/vit.json"], "cannot build a causal language model"),
    "config without model_type": (["--model", "{root}/no_type.json"], "has no model_type"),
    "config not JSON": (["--model", "{root}/broken.json"], "cannot read"),
    "missing data": (["--model", "{root}/gpt2", "--data", "{root}/nope.txt"], "no data at"),
    "ids outside the vocabulary": (["--model", "{root}/gpt2", "--data", "{root}/big_ids.pt"], "outside the model's vocabulary"),
    "data that does not fit": (["--model", "{root}/factories.py:make_mlp", "--data", "{root}/pairs.pt"], "does not fit"),
    "text for a model without tokens": (["--model", "{root}/factories.py:make_mlp", "--data", "{root}/text.txt"],
                                         "needs a model with a token embedding"),
    "float tensor alone": (["--model", "{root}/gpt2", "--data", "{root}/floats.pt"], "holds a float tensor"),
    "steps 0": (["--model", "{root}/gpt2", "--steps", "0"], "--steps must be at least 1"),
}


@pytest.fixture(scope="module")
def bad_inputs(inputs):
    (inputs / "bad_type.json").write_text('{"model_type": "no-such-model"}')
    (inputs / "vit.json").write_text(transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                            intermediate_size=64).to_json_string())  # fmt: skip
    (inputs / "no_type.json").write_text('{"n_layer": 2}')
    (inputs / "broken.json").write_text('{"model_type": "gpt2", ')
    torch.save(torch.tensor([1, 2, 10_000]), inputs / "big_ids.pt")
    torch.save((torch.randn(8, 5), torch.randn(8, 2)), inputs / "pairs.pt")
    torch.save(torch.randn(8, 5), inputs / "floats.pt")
    return inputs


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, bad_inputs, tmp_path, capsys, monkeypatch):
    args, message = BAD[case]
    out = tmp_path / "page" / "diagnose.html"
    rc, _, stderr = _run([*FAST, "--out", str(out)] + [a.format(root=bad_inputs) for a in args], capsys, monkeypatch)
    assert rc == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("specgrad diagnose: ") and message in lines[0], stderr
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_out_must_not_be_a_folder(inputs, tmp_path, capsys, monkeypatch):
    rc, _, stderr = _run(["--model", str(inputs / "gpt2"), "--out", str(tmp_path)], capsys, monkeypatch)
    assert rc == 2 and "is a folder" in stderr


def test_load_error_names_the_factory(inputs):
    with pytest.raises(LoadError, match="has no function 'nothing'"):
        load_model(f"{inputs / 'factories.py'}:nothing")


def test_pages_in_a_real_browser(pages, browser, tmp_path):
    """Headless Chromium loads every page written above: each block has its row and bar,
    every section is there, and the console is clean."""
    if not pages:
        pytest.skip("no pages were written (run the whole file)")
    for case, (page, blocks) in pages.items():
        browser.get(page.resolve().as_uri())
        assert browser.execute_script("return document.readyState") == "complete"
        rows = browser.execute_script("return Array.from(document.querySelectorAll('tr[data-block]'))"
                                      ".map(r => [r.dataset.block, r.querySelectorAll('svg').length])")  # fmt: skip
        assert [r[0] for r in rows] == blocks, case
        assert all(n == 1 for _, n in rows)
        for section in ("answer", "gains", "routing", "overrides", "skipped", "theory"):
            assert browser.execute_script(f"return !!document.getElementById('{section}')"), (case, section)
        errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, (case, errors)
    shot = tmp_path / "diagnose.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def test_recommend_routing_from_a_monitor_history():
    from specgrad.diagnostics.recommend import recommend_routing

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                              torch.nn.Linear(64, 4))  # fmt: skip
    x, y = torch.randn(256, 16), torch.randn(256, 4)
    with SpectralMonitor(net, every=1) as mon:
        for _ in range(3):
            torch.nn.functional.mse_loss(net(x), y).backward()
            mon.step()
            net.zero_grad()
        rec = recommend_routing(mon, routing=split_params(net))
        frame = mon.frame()
    table = rec.table.set_index("parameter")
    assert list(table.index) == ["0.weight", "2.weight", "4.weight"] and (table["blocks"] == 1).all()
    gains = frame.groupby("block")["ratio"].apply(lambda r: float(np.exp(np.log(r).mean())))
    assert np.allclose(table["gain"].values, gains[["0", "2", "4"]].values)
    routed = {r.name: r.rule for r in split_params(net, rec.overrides).routes}  # the overrides pasted
    for name, row in table.iterrows():
        expected = "spectral" if row.gain >= 1.25 else "adamw" if row.gain <= 0.8 else "keep"
        assert row.rule == expected and (row.default == "spectral") == (name == "2.weight")
        assert routed[name] == (row.default if expected == "keep" else expected)
    assert all(rule == "adamw" for name, rule in routed.items() if name.endswith("bias"))
    # the same from the history, blocks named like their modules
    again = recommend_routing(frame, routing=split_params(net))
    assert again.overrides == rec.overrides


def test_recommend_routing_keeps_the_default_when_too_close_or_the_probe_disagrees():
    import pandas as pd

    from specgrad.diagnostics.recommend import recommend_routing

    report = pd.DataFrame({
        "block": ["h.0.q", "h.0.k", "h.0.v", "h.1.fc", "h.2.fc", "out"],
        "parameter": ["h.0.qkv.weight"] * 3 + ["h.1.fc.weight", "h.2.fc.weight", "out.weight"],
        "predicted_gain": [3.0, 3.0, 3.0, 1.1, 4.0, float("nan")],
        "verdict": ["spectral"] * 5 + ["no gradient"],
        "measured": ["euclidean", "euclidean", "spectral", "n/a", "spectral", "n/a"],
    })  # fmt: skip
    rec = recommend_routing(report)
    rules = dict(zip(rec.table["parameter"], rec.table["rule"]))
    assert rules == {"h.0.qkv.weight": "keep", "h.1.fc.weight": "keep", "h.2.fc.weight": "spectral", "out.weight": "keep"}
    reasons = dict(zip(rec.table["parameter"], rec.table["reason"]))
    assert "probe measured the other step lower on 2/3" in reasons["h.0.qkv.weight"]
    assert "too close to call" in reasons["h.1.fc.weight"] and "no gradient" in reasons["out.weight"]
    assert rec.overrides == {"h.2.fc.weight": "spectral"} and '"h.2.fc.weight": "spectral"' in rec.code()
    with pytest.raises(ValueError, match="band"):
        recommend_routing(report, band=0.5)


def test_recommend_routing_leaves_embeddings_where_the_routing_puts_them():
    import pandas as pd

    from specgrad.diagnostics.recommend import recommend_routing

    net = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 50))
    report = pd.DataFrame({"block": ["0", "1", "2"], "parameter": ["0.weight", "1.weight", "2.weight"],
                           "predicted_gain": [5.0, 5.0, 5.0]})  # fmt: skip
    rec = recommend_routing(report, routing=split_params(net))
    assert dict(zip(rec.table["parameter"], rec.table["rule"])) == {"0.weight": "keep", "1.weight": "spectral",
                                                                     "2.weight": "spectral"}  # fmt: skip
    assert "kept on adamw: embedding" in rec.table["reason"][0] and rec.overrides == {"2.weight": "spectral"}
