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
TRAIN_ARGS ?=
CACHE_ENTRY ?=
DEMO_QUANT ?= 4bit
DEMO_EPOCHS ?= 6

export PREFECT_HOME := $(CURDIR)/data/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_DISABLE_TELEMETRY := 1

ROOT_ARG := $(if $(ROOT),--root $(ROOT),)
AUDIT_ARG := $(if $(filter 1 true yes,$(AUDIT)),--audit,)

.PHONY: help setup test lint demo shards tiny-teacher extract train eval ui bench bench-extract bench-student bench-loader clean

help: ## this list
	@echo "Targets (variables: DATASET=$(DATASET) SPLIT=$(SPLIT) ROOT=$(ROOT) SHARDS=$(SHARDS) SHARD_SIZE=$(SHARD_SIZE)"
	@echo "         TEACHER=$(TEACHER) QUANT=$(QUANT) CACHE=$(CACHE) AUDIT=$(AUDIT) MODEL=$(MODEL) WEIGHTS=$(WEIGHTS)"
	@echo "         BATCH_SIZE=$(BATCH_SIZE) EPOCHS=$(EPOCHS) BATCH=$(BATCH) FRACTION=$(FRACTION) RUN=$(RUN)"
	@echo "         CACHE_ENTRY=$(CACHE_ENTRY) EVAL_SPLIT=$(EVAL_SPLIT) TRAIN_ARGS=$(TRAIN_ARGS))"
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

tiny-teacher: $(STAMP) ## build the offline tiny LLaVA-1.5-architecture teacher in data/models/tiny-llava
	$(PY) -m teacher.tiny --out data/models/tiny-llava

extract: $(STAMP) ## teacher maps for DATASET/SPLIT into the map cache CACHE (TEACHER=<hub id|dir|tiny> QUANT=4bit|8bit|none)
	@if [ "$(TEACHER)" = "tiny" ] && [ ! -f data/models/tiny-llava/config.json ]; then $(MAKE) --no-print-directory tiny-teacher; fi
	$(PY) -m flows.extract --dataset $(DATASET) --split $(SPLIT) $(ROOT_ARG) --shards-root $(SHARDS) \
	  --shard-size $(SHARD_SIZE) --teacher $(TEACHER) --quant $(QUANT) --cache-root $(CACHE) \
	  --batch-size $(BATCH_SIZE) $(AUDIT_ARG)

train: $(STAMP) ## train an I-ViT on DATASET with its cached maps (MODEL WEIGHTS EPOCHS BATCH FRACTION RUN)
	$(PY) -m flows.train --dataset $(DATASET) --shards-root $(SHARDS) --shard-size $(SHARD_SIZE) \
	  --cache-root $(CACHE) --model $(MODEL) $(if $(WEIGHTS),--weights $(WEIGHTS),) --epochs $(EPOCHS) \
	  --batch $(BATCH) --fraction $(FRACTION) $(if $(RUN),--run $(RUN),) \
	  $(if $(CACHE_ENTRY),--cache-entry $(CACHE_ENTRY),) $(TRAIN_ARGS)

eval: $(STAMP) ## top-1 of run RUN on DATASET/EVAL_SPLIT (per-domain accuracy and variance on domain sets)
	@test -n "$(RUN)" || { echo "make eval needs RUN=<name> (a folder of data/runs)"; exit 2; }
	$(PY) -m flows.evaluate --run $(RUN) --dataset $(DATASET) --split $(EVAL_SPLIT) --shards-root $(SHARDS)

ui: $(STAMP) ## Prefect UI on http://127.0.0.1:4200 with deployments of the extract, train and evaluate flows
	$(PY) -m flows.serve --port 4200

bench: bench-extract bench-student bench-loader ## every benchmark (each ends with a RESULT line)

bench-extract: $(STAMP) ## fast vs naive attention extraction with the tiny teacher
	@if [ ! -f data/models/tiny-llava/config.json ]; then $(MAKE) --no-print-directory tiny-teacher; fi
	$(PY) -m bench.extract --arch tiny

bench-student: $(STAMP) ## I-ViT vs ViT training step time and FLOPs
	$(PY) -m bench.student

bench-loader: $(STAMP) ## image-only vs map-joined streaming throughput
	$(PY) -m bench.loader

DEMO_STUDENT := --model vit_tiny_patch16_224 --weights none --img-size 64 \
  --model-kwargs '{"patch_size": 8, "depth": 4}' --batch 32 --lr 3e-3 --num-workers 1
DEMO_EXTRACT := --dataset sample --shards-root $(SHARDS) --shard-size 100 --teacher tiny \
  --quant $(DEMO_QUANT) --dtype float32 --cache-root $(CACHE)
demo: $(STAMP) ## the whole pipeline offline: sample shards -> tiny teacher maps -> a tiny I-ViT run
	@if [ ! -f data/models/tiny-llava/config.json ]; then $(MAKE) --no-print-directory tiny-teacher; fi
	$(PY) -m flows.extract $(DEMO_EXTRACT) --split train
	$(PY) -m flows.extract $(DEMO_EXTRACT) --split val
	@# The entry these maps went to: a cache root may also hold other teachers' maps of these shards.
	entry=$$($(PY) -m flows.extract $(DEMO_EXTRACT) --split train --which-entry) && \
	$(PY) -m flows.train --dataset sample --shards-root $(SHARDS) --shard-size 100 --cache-root $(CACHE) \
	  --cache-entry $$entry $(DEMO_STUDENT) --epochs $(DEMO_EPOCHS) --run demo
	@echo "demo done: maps and their previews under $(CACHE)/<key>/previews, the run under data/runs/demo"

clean: ## remove generated data (shards, caches, runs, Prefect home); keeps raw datasets and models
	rm -rf data/shards data/cache data/runs data/prefect
