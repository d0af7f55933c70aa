# The two commands of the README's quickstart are `make demo` and `make test`; both install what
# they need first (scripts/bootstrap: a .venv, the package, redis-server when absent).
VENV := .venv/bin

.PHONY: bootstrap demo test lint pytest bench bench-quick clean

bootstrap:
	@scripts/bootstrap

demo: bootstrap
	$(VENV)/identify-queue demo

test: bootstrap lint pytest

lint:
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy

pytest:
	$(VENV)/pytest

bench: bootstrap
	$(VENV)/python -m bench.run

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache .hypothesis
