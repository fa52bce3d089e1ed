# omerofs: make setup | test | demo | demo-stop | bench
SHELL := /bin/bash
PYTHON := .venv/bin/python
DEMO_PORT ?= 14064
DEMO_DIR := .demo

.PHONY: setup test demo demo-stop bench

setup:
	scripts/setup.sh

test: setup
	$(PYTHON) -m pytest -q

# Stop a running demo first: set-up walks the source tree, and a live mount
# at ./mnt contains link cycles (Image/<id>/Fileset/Image/<id>/...).
demo:
	scripts/demo.sh stop $(DEMO_PORT)
	$(MAKE) setup
	scripts/demo.sh start $(DEMO_PORT)

demo-stop:
	scripts/demo.sh stop $(DEMO_PORT)

bench: setup
	$(PYTHON) -m benchmarks
