# The README's two commands: `make demo` and `make test`. Both create .venv when absent and
# install the project into it once; a stamp file makes a second run install nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch/torchvision are pinned to the pair that lies on this machine kind's disk (pip finds
# them offline); other versions would download gigabytes.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-all lint notebook install clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/zoomloc demo --out out/demo

# `make test`: the checks of the code's shape (ruff's format and lint, the import layers of
# pyproject.toml's [tool.importlinter]), then everything but the end-to-end runs marked `slow`
# (minutes on 2 idle cores); `make test-all` (what CI runs): the same with the slow runs. Both list
# the slowest tests and why any was skipped.
PYTEST := $(BIN)/python -m pytest -q --durations=15 -rs tests

test: lint
	$(PYTEST) -m "not slow"

test-all: lint
	$(PYTEST)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The notebook on the embedded default, top to bottom (a copy under out/demo keeps its outputs;
# open it there in Jupyter).
notebook: demo
	cp notebooks/localize_demo.ipynb out/demo/localize_demo.ipynb
	$(BIN)/jupyter execute --inplace out/demo/localize_demo.ipynb

clean-demo:
	rm -rf out/demo
