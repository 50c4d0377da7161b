# Each target creates .venv/ on first use (scripts/setup_env.sh), then reuses it.
PY := .venv/bin/python

.PHONY: env lint test demo bench gpu-check clean-env

env:
	bash scripts/setup_env.sh

lint: env
	$(PY) -m ruff check fairchem_deq tests benchmarks configs
	$(PY) -m ruff format --check fairchem_deq tests benchmarks configs
	.venv/bin/lint-imports  # the layer contract of docs/architecture.md ([tool.importlinter])

test: env
	$(PY) -m pytest -q -p no:cacheprovider tests

demo: env
	bash scripts/demo.sh

bench: env
	$(PY) -m benchmarks.run_all

# on a CUDA machine: the gpu-marked tests, float32 vs AMP solves, step cost at batch 1 and 32
# (benchmarks/results/gpu_check.json); elsewhere it says CUDA is absent and exits 0
gpu-check: env
	$(PY) -m benchmarks.gpu_check

clean-env:
	rm -rf .venv
