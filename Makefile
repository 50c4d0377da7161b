# Each target creates .venv/ on first use (scripts/setup_env.sh), then reuses it.
PY := .venv/bin/python

.PHONY: env test demo bench clean-env

env:
	bash scripts/setup_env.sh

test: env
	$(PY) -m pytest -q -p no:cacheprovider tests

demo: env
	bash scripts/demo.sh

bench: env
	$(PY) -m benchmarks.run_all

clean-env:
	rm -rf .venv
