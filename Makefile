# The two commands a new machine needs (see README):
#   make demo   install, then turn the bundled point cloud into a low-poly mesh (+ PNG preview) under out/
#   make test   install with test extras (and Chromium for the web app's browser test), then lint and run
#               the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint env env-test

env:
	scripts/setup_env.sh

env-test:
	scripts/setup_env.sh dev,ray,sam,gpu,app,human

demo: env
	$(VENV)/bin/meshgen demo --out out/demo

lint: env-test
	$(VENV)/bin/ruff check tokenizers3d renderers meshgen scripts tests

test: lint
	$(PY) -m pytest -q -x --durations=15 tests
