# `make demo` and `make test` work on a fresh machine: each installs what it needs first.
#
# torch: if the interpreter that creates the venv already has torch (a CUDA build, say),
# the venv sees it through --system-site-packages and keeps it. Otherwise TORCH_SPEC is
# installed first, so that resolving `torch>=2.5` for specgrad downloads nothing more.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
		echo "using the torch already installed for $(PYTHON)"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
	fi
	$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: install
	$(VENV)/bin/specgrad demo --size 256
	$(VENV)/bin/specgrad reproduce --preset demo --out results

test: install
	$(PY) -m pytest

bench: install
	-$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/orthogonalize.py
	$(PY) benchmarks/optimizer_step.py
	$(PY) benchmarks/monitor_overhead.py
	$(PY) benchmarks/distributed_step.py
	$(PY) benchmarks/hybrid_step.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
