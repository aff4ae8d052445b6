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
TASK       ?= classify
PROMPT     ?=
BOXES      ?= 1
CACHE_ENTRY ?=
HUMAN      ?=
EVAL_ENTRY ?=
# Scale-out (make cluster, make launch).
WORKERS    ?= 1
GPUS       ?=
HOST       ?= 127.0.0.1
PORT       ?= 4200
POOL       ?= gpus
RUNS       ?= 1
CLUSTER_API ?= http://127.0.0.1:$(PORT)/api
DEMO_QUANT ?= 4bit
# Experiments.
EXP        ?= smoke
EXP_OVERRIDE ?=
# Tiny teacher's tokenizer: bpe (small, local) or llama (the real LLaVA-1.5 vocabulary, from npm).
VOCAB      ?= bpe
DEMO_EPOCHS ?= 6

export PREFECT_HOME := $(CURDIR)/data/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# A loaded 2-core machine can take longer than Prefect's 20 s to start its ephemeral API server
# (flows without their own temporary server, e.g. flows.experiment).
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export HF_HUB_DISABLE_TELEMETRY := 1

ROOT_ARG := $(if $(ROOT),--root $(ROOT),)
AUDIT_ARG := $(if $(filter 1 true yes,$(AUDIT)),--audit,)
# Table 9's language-only maps: no box overlay, which is its own cache entry.
PROMPT_ARG := $(if $(PROMPT),--prompt $(PROMPT),) $(if $(filter 0 no false,$(BOXES)),--box-width 0,)

.PHONY: help setup test lint demo demo-detect bench-dense shards tiny-teacher extract train eval ui bench bench-extract bench-student bench-loader clean backbone spot-backbone dense-backbone bench-science experiment bench-gpu cluster launch

help: ## this list
	@echo "Targets (variables: DATASET=$(DATASET) SPLIT=$(SPLIT) ROOT=$(ROOT) SHARDS=$(SHARDS) SHARD_SIZE=$(SHARD_SIZE)"
	@echo "         TEACHER=$(TEACHER) QUANT=$(QUANT) CACHE=$(CACHE) AUDIT=$(AUDIT) MODEL=$(MODEL) WEIGHTS=$(WEIGHTS)"
	@echo "         BATCH_SIZE=$(BATCH_SIZE) EPOCHS=$(EPOCHS) BATCH=$(BATCH) FRACTION=$(FRACTION) RUN=$(RUN)"
	@echo "         CACHE_ENTRY=$(CACHE_ENTRY) EVAL_SPLIT=$(EVAL_SPLIT) EVAL_ENTRY=$(EVAL_ENTRY) HUMAN=$(HUMAN) TRAIN_ARGS=$(TRAIN_ARGS)"
	@echo "         TASK=$(TASK) PROMPT=$(PROMPT) BOXES=$(BOXES)"
	@echo "         WORKERS=$(WORKERS) GPUS=$(GPUS) HOST=$(HOST) PORT=$(PORT) POOL=$(POOL) RUNS=$(RUNS))"
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

TINY_DIR := data/models/tiny-llava$(if $(filter llama,$(VOCAB)),-llama,)
tiny-teacher: $(STAMP) ## the offline tiny LLaVA-1.5 teacher in data/models/tiny-llava (VOCAB=llama: real vocabulary, -llama)
	$(PY) -m teacher.tiny --vocab $(VOCAB) --out $(TINY_DIR)

extract: $(STAMP) ## teacher maps for DATASET/SPLIT into CACHE (TEACHER=<hub id|dir|tiny|tiny-llama|box|uniform> QUANT PROMPT; detection sets: dense prompt, BOXES=0 no overlay)
	@if [ "$(TEACHER)" = "tiny" ] && [ ! -f data/models/tiny-llava/config.json ]; then $(MAKE) --no-print-directory tiny-teacher; fi
	@if [ "$(TEACHER)" = "tiny-llama" ] && [ ! -f data/models/tiny-llava-llama/config.json ]; then $(MAKE) --no-print-directory tiny-teacher VOCAB=llama; fi
	$(PY) -m flows.extract --dataset $(DATASET) --split $(SPLIT) $(ROOT_ARG) --shards-root $(SHARDS) \
	  --shard-size $(SHARD_SIZE) --teacher $(TEACHER) --quant $(QUANT) --cache-root $(CACHE) \
	  --batch-size $(BATCH_SIZE) $(AUDIT_ARG) $(PROMPT_ARG)

train: $(STAMP) ## train an I-ViT on DATASET with its cached maps (TASK=classify|detect|segment MODEL WEIGHTS EPOCHS BATCH FRACTION RUN)
	$(PY) -m flows.train --dataset $(DATASET) --task $(TASK) --shards-root $(SHARDS) --shard-size $(SHARD_SIZE) \
	  --cache-root $(CACHE) --model $(MODEL) $(if $(WEIGHTS),--weights $(WEIGHTS),) --epochs $(EPOCHS) \
	  --batch $(BATCH) --fraction $(FRACTION) $(if $(RUN),--run $(RUN),) \
	  $(if $(CACHE_ENTRY),--cache-entry $(CACHE_ENTRY),) $(TRAIN_ARGS)

eval: $(STAMP) ## top-1 of run RUN on DATASET/EVAL_SPLIT (per domain on domain sets) + cosine of C_VFM/C_VLM/C_AGT to C_HUM (HUMAN=<file>; else the box mask); dense runs: COCO bbox/segm AP
	@test -n "$(RUN)" || { echo "make eval needs RUN=<name> (a folder of data/runs)"; exit 2; }
	$(PY) -m flows.evaluate --run $(RUN) --dataset $(DATASET) --split $(EVAL_SPLIT) --shards-root $(SHARDS) \
	  $(if $(EVAL_ENTRY),--cache-entry $(EVAL_ENTRY),) $(if $(HUMAN),--human-maps $(HUMAN),)

experiment: $(STAMP) ## run the grid of experiments/specs/$(EXP).yaml (resumable) -> data/experiments/<name>/ (EXP_OVERRIDE='<json>')
	$(PY) -m flows.experiment --spec $(EXP) --shards-root $(SHARDS) --cache-root $(CACHE) \
	  $(if $(EXP_OVERRIDE),--override '$(EXP_OVERRIDE)',)

BACKBONE   ?= data/models/shift-vit.safetensors
backbone: $(STAMP) ## pretrain the stand-in foundation ViT of bench-science (shapes x backgrounds) -> BACKBONE
	$(PY) -m experiments.backbone --out $(basename $(BACKBONE))-stage1.safetensors
	$(PY) -m experiments.backbone --init $(basename $(BACKBONE))-stage1.safetensors --epochs 14 --lr 1.5e-3 --seed 1 --out $(BACKBONE)

SPOT_BACKBONE ?= data/models/spot-vit.safetensors
spot-backbone: $(STAMP) ## pretrain the stand-in ViT of bench-science's sample-spot (shapes x marker colours) -> SPOT_BACKBONE
	$(PY) -m experiments.backbone --task spot --out $(basename $(SPOT_BACKBONE))-stage1.safetensors
	$(PY) -m experiments.backbone --task spot --init $(basename $(SPOT_BACKBONE))-stage1.safetensors --epochs 14 --lr 1.5e-3 --seed 1 --out $(SPOT_BACKBONE)

DENSE_BACKBONE ?= data/models/dense-vit.safetensors
dense-backbone: $(STAMP) ## pretrain the stand-in foundation ViT of demo-detect/bench-dense (per-patch shape classes) -> DENSE_BACKBONE
	$(DEMO_ENV) $(PY) -m experiments.dense_backbone --out $(DENSE_BACKBONE)

ui: $(STAMP) ## Prefect UI on http://127.0.0.1:4200 with deployments of the extract, train and evaluate flows
	$(PY) -m flows.serve --port 4200

cluster: $(STAMP) ## server with an auth string, process pool POOL, WORKERS workers (one per GPU; or GPUS=0,1), deployments; Ctrl-C stops all
	$(PY) -m flows.cluster --workers $(WORKERS) $(if $(GPUS),--gpus $(GPUS),) --host $(HOST) --port $(PORT) --pool $(POOL)

# Paths go to workers as absolute paths (their flow runs have their own working directory).
ABS_CACHE := $(if $(findstring ://,$(CACHE)),$(CACHE),$(abspath $(CACHE)))
launch: $(STAMP) ## RUNS extract runs of DATASET/SPLIT on the cluster's workers, waits for them (extract's variables)
	@if [ "$(TEACHER)" = "tiny" ] && [ ! -f data/models/tiny-llava/config.json ]; then $(MAKE) --no-print-directory tiny-teacher; fi
	PREFECT_API_URL=$(CLUSTER_API) PREFECT_API_AUTH_STRING="$${PREFECT_API_AUTH_STRING:-$$(cat data/prefect/api-auth)}" \
	$(PY) -m flows.launch --runs $(RUNS) --wait --dataset $(DATASET) --split $(SPLIT) $(ROOT_ARG) \
	  --shards-root $(abspath $(SHARDS)) --shard-size $(SHARD_SIZE) --teacher $(TEACHER) --quant $(QUANT) \
	  --cache-root $(ABS_CACHE) --batch-size $(BATCH_SIZE) $(AUDIT_ARG)

bench: bench-extract bench-student bench-loader bench-dense ## every benchmark (each ends with a RESULT line)

bench-extract: $(STAMP) ## fast vs naive attention extraction with the tiny teacher
	@if [ ! -f data/models/tiny-llava/config.json ]; then $(MAKE) --no-print-directory tiny-teacher; fi
	$(PY) -m bench.extract --arch tiny

bench-student: $(STAMP) ## I-ViT vs ViT training step time and FLOPs
	$(PY) -m bench.student

bench-loader: $(STAMP) ## image-only vs map-joined streaming throughput
	$(PY) -m bench.loader

BENCH_SCIENCE_ARGS ?=
bench-science: $(STAMP) ## sample-shift + sample-spot: ceiling, ViT, attention oracles, I-ViT (correct/shuffled/uniform maps), control; 3 seeds; one RESULT per benchmark
	@test -f $(BACKBONE) || $(MAKE) --no-print-directory backbone
	@test -f $(SPOT_BACKBONE) || $(MAKE) --no-print-directory spot-backbone
	TQDM_DISABLE=1 $(PY) -m bench.science --shift-weights $(BACKBONE) --spot-weights $(SPOT_BACKBONE) $(BENCH_SCIENCE_ARGS)
BENCH_DENSE_SEEDS ?= 0 1
BENCH_DENSE_EPOCHS ?= 12
bench-dense: $(STAMP) ## detection on sample-coco (box teacher maps) with vs without C_VLM alignment, equal budget, BENCH_DENSE_SEEDS; overheads
	@test -f $(DENSE_BACKBONE) || $(MAKE) --no-print-directory dense-backbone
	$(DEMO_ENV) $(PY) -m bench.dense --shards-root $(SHARDS) --cache-root $(CACHE) --weights $(DENSE_BACKBONE) \
	  --epochs $(BENCH_DENSE_EPOCHS) --seeds $(BENCH_DENSE_SEEDS)
bench-gpu: $(STAMP) ## one GPU, < 8 min on an H100: 7B architecture, real ids, fp16 and NF4, vs the prefill limit
	$(PY) -m teacher.llama_vocab
	$(PY) -m bench.gpu

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

DEMO_DETECT_EPOCHS ?= 30
# 2 cores: the loader's worker process takes one, the model one intra-op thread. Two torch
# threads on a busy 2-core machine made each tiny step 5-15x slower (OpenMP spinning), measured.
DEMO_ENV := OMP_NUM_THREADS=1
DEMO_DETR := '{"num_queries": 12, "d_model": 64, "encoder_layers": 1, "decoder_layers": 2, "attention_heads": 4, "ffn_dim": 128, "dropout": 0.0, "auxiliary_loss": true}'
# The frozen ViT is the stand-in foundation model of `make dense-backbone` (per-patch shape
# classes, other images than sample-coco's): on a random frozen ViT, DETR stays near 0.05 mAP.
DEMO_DETECT_STUDENT := --model vit_tiny_patch16_224 --weights $(DENSE_BACKBONE) --img-size 64 \
  --model-kwargs '{"patch_size": 8, "depth": 4, "embed_dim": 96, "num_heads": 3}' --batch 8 --lr 1e-3 --warmup-epochs 0.5 --num-workers 1
DEMO_DETECT_EXTRACT := --dataset sample-coco --shards-root $(SHARDS) --shard-size 100 --teacher tiny \
  --quant $(DEMO_QUANT) --dtype float32 --cache-root $(CACHE)
demo-detect: $(STAMP) ## dense path offline: sample-coco -> tiny teacher's dense maps -> Conditional DETR on a small pretrained I-ViT -> COCO mAP
	@if [ ! -f data/models/tiny-llava/config.json ]; then $(MAKE) --no-print-directory tiny-teacher; fi
	@test -f $(DENSE_BACKBONE) || $(MAKE) --no-print-directory dense-backbone
	$(DEMO_ENV) $(PY) -m flows.extract $(DEMO_DETECT_EXTRACT) --split train
	$(DEMO_ENV) $(PY) -m flows.extract $(DEMO_DETECT_EXTRACT) --split val
	entry=$$($(PY) -m flows.extract $(DEMO_DETECT_EXTRACT) --split train --which-entry) && \
	$(DEMO_ENV) $(PY) -m flows.train --dataset sample-coco --task detect --shards-root $(SHARDS) --shard-size 100 \
	  --cache-root $(CACHE) --cache-entry $$entry $(DEMO_DETECT_STUDENT) --detr $(DEMO_DETR) \
	  --epochs $(DEMO_DETECT_EPOCHS) --run demo-detect
	$(DEMO_ENV) $(PY) -m flows.evaluate --run demo-detect --dataset sample-coco --split val --shards-root $(SHARDS)
	@echo "demo-detect done: data/runs/demo-detect (eval-val.json, eval-val-overlays.png, model.txt, curves.png)"

clean: ## remove generated data (shards, caches, runs, Prefect home); keeps raw datasets and models
	rm -rf data/shards data/cache data/runs data/prefect
