# The README's two commands: `make report` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  ?= 4
# GPUs to use at once (`make report GPUS=2`): jobs that may run on CUDA each claim one.
# Unset: no limit on GPU jobs, which then wait for a free GPU inside the job. The target
# goes before --resources, which would take every later word as a resource.
GPUS   ?=
# Another config file, used instead of config.yaml, not merged over it
# (`make report CONFIG=configs/as_coded_twins.yaml`).
CONFIG ?=
STAMP  := $(VENV)/.installed

.PHONY: setup report test lint lock bench clean

setup: $(STAMP)

# Editable install; every dependency at the version of constraints.txt (the environment the
# tests last passed in). torch==2.13.0 is a CPU build locally; on a CUDA machine, install
# your CUDA build of torch 2.13.0 first and pip keeps it. pesq is built from source: it
# needs a C compiler and the Python headers (Debian: gcc, python3.11-dev).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Rewrite constraints.txt from .venv (after the tests passed with upgraded dependencies).
lock: $(STAMP)
	{ sed -n '1,/^[^#]/{/^#/p}' constraints.txt; \
	  $(BIN)/python -m pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+.*/torch==\1/'; \
	} > constraints.txt.tmp && mv constraints.txt.tmp constraints.txt

report: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/mbsnet watch -- $(BIN)/snakemake --cores $(CORES) report$(if $(CONFIG), --configfile $(CONFIG) --replace-workflow-config)$(if $(GPUS), --resources gpu=$(GPUS))

# As root on Debian, also installs the system packages some tests need (a local SLURM
# cluster, Chromium for the report); elsewhere those tests skip with a reason.
# The static checks first (ruff, snakefmt, mypy; config in pyproject.toml): seconds, mypy
# half a minute the first time, before its cache in .mypy_cache.
test: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/snakefmt --check .
	$(BIN)/mypy mbsnet
	bash scripts/install-system-deps.sh
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -ra

# The same checks as .pre-commit-config.yaml, and snakemake's own linter.
lint: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/snakefmt --check .
	$(BIN)/mypy mbsnet
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --lint

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/scan.py --json results/benchmarks/scan.json
	$(BIN)/python benchmarks/scan.py --count-ops --json results/benchmarks/scan_ops.json
	$(BIN)/python benchmarks/ablations.py --batch-size 6 --crop-seconds 2 --threads 1 --json results/benchmarks/ablations.json
	$(BIN)/python benchmarks/metrics.py --json results/benchmarks/metrics.json

clean:
	rm -rf results/* .snakemake
