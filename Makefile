# gpu-watchdog: `make up` brings the suite up on this machine, `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages: real Slurm + munge, Prometheus/promtool, Alertmanager/amtool, shellcheck.
# python3-venv: the checkout's venv (ansible comes from pip); python3-apt: Ansible's apt module.
# podman (runc, netavark + aardvark-dns for pod DNS names, iptables for netavark's bridge rules), mmdebstrap:
# the pods of `make cluster-up`.
# victoria-metrics (long-term storage), postgresql (the agent replicas' shared store): docs/scaling.md.
APT_PACKAGES := munge slurm-wlm slurm-client prometheus prometheus-alertmanager shellcheck procps curl \
	python3-venv python3-apt podman runc netavark aardvark-dns catatonit iptables mmdebstrap openssh-client \
	victoria-metrics postgresql
# Extra ansible-playbook variables for make up/down/status, e.g. UP_ARGS="-e agent_webhook_port=9195".
UP_ARGS ?=
# down must work whether or not the venv is there (make clean runs it first).
STACK = $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) scripts/stack.py
PYTEST_ARGS ?=

.PHONY: help up down status test lint system-deps venv bench clean cluster-up cluster-down cluster-status pod-image gpu-check

help:
	@echo "make up      install what is needed and deploy the suite here with Ansible (loopback, simulated GPUs)"
	@echo "make down    stop everything 'make up' started"
	@echo "make status  show what is running"
	@echo "make cluster-up      a head pod + 2 GPU worker pods (containers) via the RunPod emulator and the playbooks"
	@echo "make cluster-down    tear that cluster down (safe to re-run)"
	@echo "make cluster-status  its pods, services and Slurm nodes"
	@echo "make pod-image       build the pod image from pod-image/Dockerfile with podman (local Debian 12 base)"
	@echo "make test    install test dependencies and run the whole suite (lint included)"
	@echo "make lint    ruff + mypy only"
	@echo "make bench   run the benchmarks under bench/"
	@echo "make dashboards  regenerate grafana/dashboards/*.json from grafana/*.py"
	@echo "make gpu-check   on a machine with an NVIDIA driver: real-NVML tests, benchmark, promtool on a real scrape"

system-deps:
	@scripts/install-system-deps.sh $(APT_PACKAGES)

$(BIN)/.installed: setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[test,bench]'
	@touch $@

venv: $(BIN)/.installed

# The real deploy path: ansible/site.yml with ansible/inventory/local.yml (docs/quickstart.md).
up: system-deps venv
	@$(BIN)/python scripts/stack.py up $(UP_ARGS)

down:
	@$(STACK) down $(UP_ARGS)

status:
	@$(STACK) status $(UP_ARGS)

# A head + N GPU worker pods on this machine (docs/runpod.md, "The RunPod emulator").
CLUSTER_ARGS ?=
cluster-up: system-deps venv
	@$(BIN)/python scripts/cluster.py up $(CLUSTER_ARGS)

cluster-down: venv
	@$(BIN)/python scripts/cluster.py down

cluster-status: venv
	@$(BIN)/python scripts/cluster.py status

pod-image: system-deps venv
	@$(BIN)/python scripts/pod_image.py build

test: system-deps venv
	@$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	@$(BIN)/python -m ruff check .
	@$(BIN)/python -m ruff format --check .
	@$(BIN)/python -m mypy --config-file setup.cfg

# Needs a real NVIDIA driver (docs/gpu-exporter.md, "Real GPUs"); exits 2 where there is none.
gpu-check: venv
	@scripts/gpu-check.sh

bench: venv
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean: down
	rm -rf $(VENV) .run build *.egg-info .mypy_cache .ruff_cache .pytest_cache

dashboards: venv  ## regenerate grafana/dashboards/*.json from grafana/*.py (docs/grafana.md)
	@$(BIN)/python -m grafana.generate
