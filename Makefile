# The two commands of the README: `make run` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch==2.13.0 is the CPU wheel on this machine's disk. Elsewhere pip fetches the default build
# for the platform; for a specific CUDA build run e.g.
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cu126
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
MODELS := gmm factor-analysis ppca
GUIDE ?= exact

.PHONY: setup run test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $@

setup: $(VENV)/.installed

run: setup
	@for model in $(MODELS); do \
		$(BIN)/python -m gallery run $$model --data iris --guide $(GUIDE) --out runs/$$model || exit 1; \
	done
	$(BIN)/python -m gallery run vae --data digits --out runs/vae

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
