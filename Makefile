# Learning-from-Interactions distillation pipeline. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BIN ?= python3.11
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed

# Variables shared by every target (names are part of the interface: keep them).
DATASET    ?= sample
ROOT       ?=
SPLIT      ?= train
SHARDS     ?= data/shards
SHARD_SIZE ?= 1000
# Teacher stage.
TEACHER    ?= llava-hf/llava-1.5-7b-hf
QUANT      ?= 4bit
CACHE      ?= data/cache
AUDIT      ?= 0
BATCH_SIZE ?= 8
# Student stage.
MODEL      ?= vit_small_patch16_224
WEIGHTS    ?=
EPOCHS     ?= 10
BATCH      ?= 64
FRACTION   ?= 1.0
RUN        ?=
EVAL_SPLIT ?= val

export PREFECT_HOME := $(CURDIR)/data/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_LOGGING_LEVEL ?= WARNING
export HF_HUB_DISABLE_TELEMETRY := 1

ROOT_ARG := $(if $(ROOT),--root $(ROOT),)
AUDIT_ARG := $(if $(filter 1 true yes,$(AUDIT)),--audit,)

.PHONY: help setup test lint demo shards tiny-teacher extract train eval ui bench bench-extract bench-student bench-loader clean

help: ## this list
	@echo "Targets (variables: DATASET=$(DATASET) SPLIT=$(SPLIT) ROOT=$(ROOT) SHARDS=$(SHARDS) SHARD_SIZE=$(SHARD_SIZE)"
	@echo "         TEACHER=$(TEACHER) QUANT=$(QUANT) CACHE=$(CACHE) AUDIT=$(AUDIT) MODEL=$(MODEL) WEIGHTS=$(WEIGHTS)"
	@echo "         EPOCHS=$(EPOCHS) BATCH=$(BATCH) FRACTION=$(FRACTION) RUN=$(RUN))"
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project (idempotent)

test: $(STAMP) ## run the test suite (fails when no test is collected)
	@$(PY) -m pytest -q tests; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$status

lint: $(STAMP) ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

shards: $(STAMP) ## write DATASET/SPLIT as WebDataset shards under SHARDS (sample: generated if missing)
	$(PY) -m pipeline shards --dataset $(DATASET) --split $(SPLIT) $(ROOT_ARG) --out $(SHARDS) --shard-size $(SHARD_SIZE)

demo: $(STAMP) ## the whole pipeline offline on the sample dataset
	$(PY) -m pipeline shards --dataset sample --split train --out $(SHARDS) --shard-size 100
	$(PY) -m pipeline shards --dataset sample --split val --out $(SHARDS) --shard-size 100

clean: ## remove generated data (shards, caches, runs, Prefect home); keeps raw datasets and models
	rm -rf data/shards data/cache data/runs data/prefect
