# The two commands of the README's quickstart are `make demo` and `make test`; both install what
# they need first (scripts/bootstrap: a .venv, the package, redis-server when absent).
VENV := .venv/bin

.PHONY: bootstrap demo test lint pytest bench clean

bootstrap:
	@scripts/bootstrap

demo: bootstrap
	$(VENV)/identify-queue demo

test: bootstrap lint pytest

lint:
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy
	scripts/luacheck

pytest:
	$(VENV)/pytest

# Each writes its table to bench/results/; scripts/readme-figures copies them into README.md and docs/.
bench: bootstrap
	$(VENV)/python -m bench.run
	$(VENV)/python -m bench.throttling
	$(VENV)/python -m bench.memory
	$(VENV)/python -m bench.importer
	$(VENV)/python -m bench.ingest
	$(VENV)/python -m bench.stages
	$(VENV)/python -m bench.backlog
	$(VENV)/python -m bench.cluster
	$(VENV)/python -m bench.flat
	$(VENV)/python -m bench.budget
	$(VENV)/python -m bench.producers
	$(VENV)/python scripts/triage-transcript
	$(VENV)/python scripts/readme-figures

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache .hypothesis
