# Developer entry points. Everything runs from the project virtualenv made by bootstrap.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: bootstrap test lint typecheck fmt demo bench bench-detect clean distclean

bootstrap:
	bash scripts/bootstrap.sh

test: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: bootstrap
	$(VENV)/bin/mypy gateway adapters simulator tests

fmt: bootstrap
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: bootstrap
	$(VENV)/bin/edge-gateway demo

# throughput, alert latency, footprint, then the alert cases (tests/bench_alerts.py:
# publisher, noisy background vs an echo peer and Node-RED, storm), then the scale-out
# cases (tests/bench_scale.py: 1 gateway vs 2 shards, NATS 3-node failover; ~6 min more,
# alone: python -m tests.bench --scale-only); ~13 min in all.
# Node-RED is installed with npm into ~/.cache/edge-gateway/node-red when missing.
bench: bootstrap
	$(PY) -m tests.bench

# detection quality on real labelled pump data (../shared/data/skab), through a real gateway
bench-detect: bootstrap
	$(PY) -m tests.bench_detect

clean:
	rm -rf build dist .demo *.egg-info .pytest_cache .ruff_cache .mypy_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
