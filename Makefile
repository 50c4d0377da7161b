# Each target creates .venv/ on first use (scripts/setup_env.sh), then reuses it.
PY := .venv/bin/python

.PHONY: env lint test demo bench clean-env

env:
	bash scripts/setup_env.sh

lint: env
	$(PY) -m ruff check fairchem_deq tests benchmarks configs
	$(PY) -m ruff format --check fairchem_deq tests benchmarks configs

test: env
	$(PY) -m pytest -q -p no:cacheprovider tests

demo: env
	bash scripts/demo.sh

bench: env
	$(PY) -m benchmarks.run_all

clean-env:
	rm -rf .venv
