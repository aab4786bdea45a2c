# Everyday commands. `make help` lists them.
.DEFAULT_GOAL := help
VENV := .venv/bin

help: ## list the everyday commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

venv: ## create .venv with eci-agent and the dev tools
	scripts/bootstrap

run: ## run the agent in front of an engine (starts an isolated one if none answers)
	scripts/run-agent

test: ## the whole suite, as CI runs it (lint, types, unit, e2e on a private dockerd, gui)
	scripts/test

native: venv ## compile the proxy's hot modules with mypyc (optional: else pure Python)
	scripts/build-native

unit: venv ## fast tests of the pure core only
	$(VENV)/python -m pytest tests/unit -q

lint: venv ## ruff + mypy
	$(VENV)/ruff check . && $(VENV)/ruff format --check . && $(VENV)/mypy agent gui

fix: venv ## ruff autofix + format
	$(VENV)/ruff check --fix . && $(VENV)/ruff format .

bench: venv ## proxy vs direct engine socket, ratios (see bench/); rebuilds the compiled modules first
	scripts/build-native >/dev/null || echo "bench: compiled modules not built; measuring pure Python" >&2
	$(VENV)/python -m bench

check: venv ## validate an admin-settings.json: make check FILE=path
	$(VENV)/eci-agent check $(FILE)
