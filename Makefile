# The memory engine's entry points. `make demo` and `make test` install what they need.
.DEFAULT_GOAL := help
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True

.PHONY: help install demo test test-fast lint bench bench-quick bench-compare clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' Makefile | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

install: ## Create .venv, install pinned dependencies, build llama.cpp safely, install default models
	@bash scripts/install.sh

demo: install ## Run the coffee-to-tea story on data/demo.duckdb with the bundled models
	@.venv/bin/memengine --db data/demo.duckdb demo

test: install ## Run every test, the real-model ones included
	MEMENGINE_REQUIRE_MODELS=1 $(PY) -m pytest -q

test-fast: ## Only the fast tests (hashing embedder, no models)
	$(PY) -m pytest -q -m "not model"

lint: install ## ruff and mypy
	$(PY) -m ruff check engine tests benchmarks
	$(PY) -m mypy

bench: install ## Run every benchmark (45-60 min; see benchmarks/README.md) into benchmarks/results/
	$(PY) -m benchmarks all

bench-quick: install ## Every benchmark at small sizes (a few minutes)
	$(PY) -m benchmarks all --quick

bench-compare: install ## Side-by-side with mem0 (builds .venv-mem0 on first use)
	$(PY) -m benchmarks compare $(if $(wildcard .venv-mem0/bin/python),,--setup)

clean: ## Remove the venv, caches and demo data (not the model cache)
	rm -rf .venv .stamps .pytest_cache .mypy_cache .ruff_cache data build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
