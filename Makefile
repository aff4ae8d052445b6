# Learning-from-Interactions distillation pipeline. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BIN ?= python3.11
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed

# Variables (names are part of the interface: keep them). Each defaults to empty and becomes a
# flag only when set, so every default is declared once, in the config model or command line the
# flag belongs to (`python -m flows.train --help`, the Prefect forms); `make help` shows them.
# Data roots follow LFI_DATA_DIR (default data/), as in Python (pipeline/paths.py).
flag = $(if $(strip $(2)),$(1) $(2),)
DATASET    ?=
ROOT       ?=
SPLIT      ?=
SHARDS     ?=
SHARD_SIZE ?=
# Teacher stage.
TEACHER    ?=
QUANT      ?=
CACHE      ?=
AUDIT      ?=
BATCH_SIZE ?=
PROMPT     ?=
BOXES      ?=
# Student stage.
MODEL      ?=
WEIGHTS    ?=
EPOCHS     ?=
BATCH      ?=
FRACTION   ?=
RUN        ?=
EVAL_SPLIT ?=
TRAIN_ARGS ?=
TASK       ?=
CACHE_ENTRY ?=
HUMAN      ?=
EVAL_ENTRY ?=
# Scale-out (make ui, make cluster, make launch).
WORKERS    ?=
GPUS       ?=
HOST       ?=
PORT       ?=
POOL       ?=
RUNS       ?=
# Experiments.
EXP        ?=
EXP_OVERRIDE ?=
# Tiny teacher's tokenizer: bpe (small, local) or llama (the real LLaVA-1.5 vocabulary, from npm).
VOCAB      ?=
# Extra flags for a benchmark's or a backbone's command (`make bench-student ARGS="--batch 8"`).
ARGS       ?=

DATA_DIR   := $(or $(LFI_DATA_DIR),data)
MODELS_DIR := $(DATA_DIR)/models
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# A loaded 2-core machine can take longer than Prefect's 20 s to start its ephemeral API server
# (flows without their own temporary server, e.g. flows.experiment).
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export HF_HUB_DISABLE_TELEMETRY := 1

# Table 9's language-only maps: no box overlay, which is its own cache entry.
BOX_ARG := $(if $(filter 0 no false,$(BOXES)),--box-width 0,)
AUDIT_ARG := $(if $(filter 1 true yes,$(AUDIT)),--audit,)
SHARDS_ARGS := $(call flag,--dataset,$(DATASET)) $(call flag,--split,$(SPLIT)) $(call flag,--root,$(ROOT)) \
  $(call flag,--shards-root,$(SHARDS)) $(call flag,--shard-size,$(SHARD_SIZE))
TEACHER_ARGS := $(call flag,--teacher,$(TEACHER)) $(call flag,--quant,$(QUANT)) \
  $(call flag,--batch-size,$(BATCH_SIZE)) $(call flag,--prompt,$(PROMPT)) $(BOX_ARG) $(AUDIT_ARG)
# The tiny teachers are built on first use (seconds, offline), where teacher.weights.checkpoint looks.
TINY_IF_NEEDED = $(if $(filter tiny,$(1)),test -f $(MODELS_DIR)/tiny-llava/config.json || $(MAKE) --no-print-directory tiny-teacher VOCAB=bpe;,) \
  $(if $(filter tiny-llama,$(1)),test -f $(MODELS_DIR)/tiny-llava-llama/config.json || $(MAKE) --no-print-directory tiny-teacher VOCAB=llama;,) true

.PHONY: help setup lock test test-fast lint demo demo-detect bench-dense shards tiny-teacher extract train eval ui bench bench-extract bench-teacher bench-student bench-loader bench-integrity clean backbone spot-backbone dense-backbone bench-science experiment bench-gpu cluster launch

help: ## this list
	@echo "Variables (empty = the command's own default): DATASET ROOT SPLIT SHARDS SHARD_SIZE TEACHER QUANT CACHE"
	@echo "  AUDIT BATCH_SIZE PROMPT BOXES MODEL WEIGHTS EPOCHS BATCH FRACTION RUN EVAL_SPLIT TRAIN_ARGS TASK"
	@echo "  CACHE_ENTRY HUMAN EVAL_ENTRY WORKERS GPUS HOST PORT POOL RUNS EXP EXP_OVERRIDE VOCAB ARGS"
	@echo "  Data under LFI_DATA_DIR (now $(DATA_DIR)). Defaults: python -m flows.extract --help, python -m flows.train --help"
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

# The environment the tests ran with: exact versions from the committed lock (Linux x86_64,
# CPython 3.11), the project itself on top without resolving anything again. pyproject.toml keeps
# the ranges for people who install the package into an environment of their own.
LOCK       := requirements.lock
UV_COMPILE := $(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 --quiet
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install --quiet -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	@touch $(STAMP)

setup: $(STAMP) ## create .venv with exactly the versions of requirements.lock, and the project (idempotent)

lock: $(STAMP) ## re-resolve requirements.lock from pyproject.toml's ranges (today's releases), print what changed
	@cp $(LOCK) $(LOCK).old
	$(UV_COMPILE) --upgrade -o $(LOCK)
	@echo "requirements.lock:"; $(PY) tools/lock_changes.py $(LOCK).old $(LOCK); rm -f $(LOCK).old
	@echo "then: make setup (installs it), make test, and commit requirements.lock"

test: $(STAMP) ## the whole test suite, as CI runs it (fails when no test is collected)
	@$(PY) -m pytest -q --durations=15 tests; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$status

test-fast: $(STAMP) ## the suite without the slow end-to-end tests (the edit loop)
	@$(PY) -m pytest -q -m "not slow" tests; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$status

lint: $(STAMP) ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

shards: $(STAMP) ## write DATASET/SPLIT as WebDataset shards under SHARDS (sample: generated if missing)
	$(PY) -m pipeline shards $(call flag,--dataset,$(DATASET)) $(call flag,--split,$(SPLIT)) \
	  $(call flag,--root,$(ROOT)) $(call flag,--out,$(SHARDS)) $(call flag,--shard-size,$(SHARD_SIZE))

tiny-teacher: $(STAMP) ## the offline tiny LLaVA-1.5 teacher in data/models/tiny-llava (VOCAB=llama: real vocabulary, -llama)
	$(PY) -m teacher.weights.tiny $(call flag,--vocab,$(VOCAB))

extract: $(STAMP) ## teacher maps for DATASET/SPLIT into CACHE (TEACHER=<hub id|dir|tiny|tiny-llama|box|mask|uniform> QUANT PROMPT; detection sets: dense prompt, BOXES=0 no overlay)
	@$(call TINY_IF_NEEDED,$(TEACHER))
	$(PY) -m flows.extract $(SHARDS_ARGS) $(TEACHER_ARGS) $(call flag,--cache-root,$(CACHE))

train: $(STAMP) ## train an I-ViT on DATASET with its cached maps (TASK=classify|detect|segment MODEL WEIGHTS EPOCHS BATCH FRACTION RUN)
	$(PY) -m flows.train $(call flag,--dataset,$(DATASET)) $(call flag,--task,$(TASK)) \
	  $(call flag,--shards-root,$(SHARDS)) $(call flag,--shard-size,$(SHARD_SIZE)) \
	  $(call flag,--cache-root,$(CACHE)) $(call flag,--cache-entry,$(CACHE_ENTRY)) \
	  $(call flag,--model,$(MODEL)) $(call flag,--weights,$(WEIGHTS)) $(call flag,--epochs,$(EPOCHS)) \
	  $(call flag,--batch,$(BATCH)) $(call flag,--fraction,$(FRACTION)) $(call flag,--run,$(RUN)) $(TRAIN_ARGS)

eval: $(STAMP) ## top-1 of run RUN on DATASET/EVAL_SPLIT (per domain on domain sets) + cosine of C_VFM/C_VLM/C_AGT to C_HUM (HUMAN=<file>; else the box mask); dense runs: COCO bbox/segm AP
	@test -n "$(RUN)" || { echo "make eval needs RUN=<name> (a folder of $(DATA_DIR)/runs)"; exit 2; }
	$(PY) -m flows.evaluate --run $(RUN) $(call flag,--dataset,$(DATASET)) $(call flag,--split,$(EVAL_SPLIT)) \
	  $(call flag,--shards-root,$(SHARDS)) $(call flag,--cache-entry,$(EVAL_ENTRY)) $(call flag,--human-maps,$(HUMAN))

experiment: $(STAMP) ## run the grid of experiments/specs/$(EXP).yaml (resumable) -> data/experiments/<name>/ (EXP_OVERRIDE='<json>')
	$(PY) -m flows.experiment $(call flag,--spec,$(EXP)) $(call flag,--shards-root,$(SHARDS)) \
	  $(call flag,--cache-root,$(CACHE)) $(if $(EXP_OVERRIDE),--override '$(EXP_OVERRIDE)',)

BACKBONE   ?= $(MODELS_DIR)/shift-vit.safetensors
backbone: $(STAMP) ## pretrain the stand-in foundation ViT of bench-science (shapes x backgrounds) -> BACKBONE
	$(PY) -m experiments.backbones.backbone --out $(basename $(BACKBONE))-stage1.safetensors $(ARGS)
	$(PY) -m experiments.backbones.backbone --init $(basename $(BACKBONE))-stage1.safetensors --epochs 14 --lr 1.5e-3 --seed 1 --out $(BACKBONE) $(ARGS)

SPOT_BACKBONE ?= $(MODELS_DIR)/spot-vit.safetensors
spot-backbone: $(STAMP) ## pretrain the stand-in ViT of bench-science's sample-spot (shapes x marker colours) -> SPOT_BACKBONE
	$(PY) -m experiments.backbones.backbone --task spot --out $(basename $(SPOT_BACKBONE))-stage1.safetensors $(ARGS)
	$(PY) -m experiments.backbones.backbone --task spot --init $(basename $(SPOT_BACKBONE))-stage1.safetensors --epochs 14 --lr 1.5e-3 --seed 1 --out $(SPOT_BACKBONE) $(ARGS)

DENSE_BACKBONE ?= $(MODELS_DIR)/dense-vit.safetensors
dense-backbone: $(STAMP) ## pretrain the stand-in foundation ViT of demo-detect/bench-dense (per-patch shape classes) -> DENSE_BACKBONE
	$(DEMO_ENV) $(PY) -m experiments.backbones.dense_backbone --out $(DENSE_BACKBONE) $(ARGS)

ui: $(STAMP) ## Prefect UI on http://127.0.0.1:PORT with deployments of the extract, train, evaluate and experiment flows
	$(PY) -m flows.ops.serve $(call flag,--port,$(PORT)) $(call flag,--host,$(HOST))

cluster: $(STAMP) ## server with an auth string, process pool POOL, WORKERS workers (one per GPU; or GPUS=0,1), deployments; Ctrl-C stops all
	$(PY) -m flows.ops.cluster $(call flag,--workers,$(WORKERS)) $(call flag,--gpus,$(GPUS)) \
	  $(call flag,--host,$(HOST)) $(call flag,--port,$(PORT)) $(call flag,--pool,$(POOL))

# Paths go to workers as absolute paths (their flow runs have their own working directory); the
# Python defaults are absolute already. The API is the cluster's (its address file, unless set).
absolute = $(if $(findstring ://,$(1)),$(1),$(abspath $(1)))
launch: $(STAMP) ## RUNS extract runs of DATASET/SPLIT on the cluster's workers, waits for them (extract's variables)
	@$(call TINY_IF_NEEDED,$(TEACHER))
	PREFECT_API_URL="$${CLUSTER_API:-$$(cat $(DATA_DIR)/prefect/api-url)}" \
	PREFECT_API_AUTH_STRING="$${PREFECT_API_AUTH_STRING:-$$(cat $(DATA_DIR)/prefect/api-auth)}" \
	$(PY) -m flows.ops.launch $(call flag,--runs,$(RUNS)) --wait $(call flag,--dataset,$(DATASET)) \
	  $(call flag,--split,$(SPLIT)) $(call flag,--root,$(ROOT)) $(call flag,--shard-size,$(SHARD_SIZE)) \
	  $(if $(SHARDS),--shards-root $(call absolute,$(SHARDS)),) $(if $(CACHE),--cache-root $(call absolute,$(CACHE)),) \
	  $(TEACHER_ARGS)

bench: bench-extract bench-teacher bench-student bench-loader bench-dense ## every benchmark (each ends with a RESULT line)

bench-extract: $(STAMP) ## fast vs naive attention extraction with the tiny teacher
	@$(call TINY_IF_NEEDED,tiny)
	$(PY) -m bench.extract --arch tiny $(ARGS)

bench-teacher: $(STAMP) ## tiny teacher on the CPU: images/s at batch 1/8/32, ms per decode step, host reads per batch, ms per image to build inputs
	@$(call TINY_IF_NEEDED,tiny)
	$(PY) -m bench.teacher $(ARGS)

bench-student: $(STAMP) ## I-ViT vs ViT training step time and FLOPs
	$(PY) -m bench.student $(ARGS)

bench-loader: $(STAMP) ## image-only vs map-joined streaming throughput
	$(PY) -m bench.loader $(ARGS)

bench-integrity: $(STAMP) ## cost of the integrity checks: extraction and loader with vs without them, and the once-per-run check
	$(PY) -m bench.integrity $(ARGS)

BENCH_SCIENCE_ARGS ?=
bench-science: $(STAMP) ## sample-shift + sample-spot: ceiling, ViT, attention oracles, I-ViT (correct/shuffled/uniform maps), control; 3 seeds; one RESULT per benchmark
	@test -f $(BACKBONE) || $(MAKE) --no-print-directory backbone
	@test -f $(SPOT_BACKBONE) || $(MAKE) --no-print-directory spot-backbone
	TQDM_DISABLE=1 $(PY) -m bench.science --shift-weights $(BACKBONE) --spot-weights $(SPOT_BACKBONE) $(ARGS)
bench-dense: $(STAMP) ## detection on sample-coco (box teacher maps) with vs without C_VLM alignment, equal budget, 2 seeds; overheads
	@test -f $(DENSE_BACKBONE) || $(MAKE) --no-print-directory dense-backbone
	$(DEMO_ENV) $(PY) -m bench.dense $(call flag,--shards-root,$(SHARDS)) $(call flag,--cache-root,$(CACHE)) \
	  --weights $(DENSE_BACKBONE) $(ARGS)
bench-gpu: $(STAMP) ## one GPU, < 8 min on an H100: 7B architecture, real ids, fp16 and NF4, vs the prefill limit
	$(PY) -m teacher.weights.llama_vocab
	$(PY) -m bench.gpu $(ARGS)

DEMO_EPOCHS ?= 6
DEMO_QUANT ?= 4bit
DEMO_EXTRACT := --dataset sample $(call flag,--shards-root,$(SHARDS)) --shard-size 100 --teacher tiny \
  --quant $(DEMO_QUANT) --dtype float32 $(call flag,--cache-root,$(CACHE))
demo: $(STAMP) ## the whole pipeline offline: sample shards -> tiny teacher maps -> a tiny I-ViT run
	@$(call TINY_IF_NEEDED,tiny)
	$(PY) -m flows.extract $(DEMO_EXTRACT) --split train
	$(PY) -m flows.extract $(DEMO_EXTRACT) --split val
	@# The entry these maps went to: a cache root may also hold other teachers' maps of these shards.
	entry=$$($(PY) -m flows.extract $(DEMO_EXTRACT) --split train --which-entry) && \
	$(PY) -m flows.train --dataset sample $(call flag,--shards-root,$(SHARDS)) --shard-size 100 \
	  $(call flag,--cache-root,$(CACHE)) --cache-entry $$entry --preset demo --epochs $(DEMO_EPOCHS) --run demo
	@echo "demo done: maps and their previews under $(or $(CACHE),$(DATA_DIR)/cache)/<key>/previews, the run under $(DATA_DIR)/runs/demo"

DEMO_DETECT_EPOCHS ?= 30
# 2 cores: the loader's worker process takes one, the model one intra-op thread. Two torch
# threads on a busy 2-core machine made each tiny step 5-15x slower (OpenMP spinning), measured.
DEMO_ENV := OMP_NUM_THREADS=1
DEMO_DETECT_EXTRACT := --dataset sample-coco $(call flag,--shards-root,$(SHARDS)) --shard-size 100 --teacher tiny \
  --quant $(DEMO_QUANT) --dtype float32 $(call flag,--cache-root,$(CACHE))
demo-detect: $(STAMP) ## dense path offline: sample-coco -> tiny teacher's dense maps -> Conditional DETR on a small pretrained I-ViT -> COCO mAP
	@$(call TINY_IF_NEEDED,tiny)
	@test -f $(DENSE_BACKBONE) || $(MAKE) --no-print-directory dense-backbone
	$(DEMO_ENV) $(PY) -m flows.extract $(DEMO_DETECT_EXTRACT) --split train
	$(DEMO_ENV) $(PY) -m flows.extract $(DEMO_DETECT_EXTRACT) --split val
	entry=$$($(PY) -m flows.extract $(DEMO_DETECT_EXTRACT) --split train --which-entry) && \
	$(DEMO_ENV) $(PY) -m flows.train --dataset sample-coco --task detect $(call flag,--shards-root,$(SHARDS)) --shard-size 100 \
	  $(call flag,--cache-root,$(CACHE)) --cache-entry $$entry --preset demo-detect --weights $(DENSE_BACKBONE) \
	  --epochs $(DEMO_DETECT_EPOCHS) --run demo-detect
	$(DEMO_ENV) $(PY) -m flows.evaluate --run demo-detect --dataset sample-coco --split val $(call flag,--shards-root,$(SHARDS))
	@echo "demo-detect done: $(DATA_DIR)/runs/demo-detect (eval-val.json, eval-val-overlays.png, model.txt, curves.png)"

clean: ## remove generated data (shards, caches, runs, Prefect home); keeps raw datasets and models
	rm -rf $(DATA_DIR)/shards $(DATA_DIR)/cache $(DATA_DIR)/runs $(DATA_DIR)/prefect
