# Every target sets up .venv itself; a second run reuses it (the stamp file tracks pyproject and constraints).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU machines pin the local CPU build of torch; on a GPU machine run `make CONSTRAINTS= test` for a CUDA build.
CONSTRAINTS ?= constraints-cpu.txt
PIP_CONSTRAINT_FLAG := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
# Tiny batched matmuls on a shared box: spinning OpenMP threads cost more than they save.
export OMP_WAIT_POLICY := passive

.PHONY: setup demo test bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	# torch first, so DeepSpeed's build (no isolation: its setup imports torch) sees the pinned build.
	$(PY) -m pip install -q $(PIP_CONSTRAINT_FLAG) "torch>=2.4"
	$(PY) -m pip install -q $(PIP_CONSTRAINT_FLAG) --no-build-isolation -e ".[dev,deepspeed,ray]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/subliminal-pl pipeline --config configs/toy/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	set -e; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

lint: $(STAMP)
	$(VENV)/bin/ruff check subliminal_pl tests bench
	$(VENV)/bin/ruff format --check subliminal_pl tests bench
	# Layering contracts (pyproject.toml, [tool.importlinter]).
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs outputs .pytest_cache
