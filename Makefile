# Developer tasks. `make run` and `make test` are the two commands in the README.
.PHONY: run test test-fast lint typecheck layers bench bootstrap clean

bootstrap:
	@./scripts/bootstrap.sh

run: bootstrap
	@.venv/bin/triage demo

test:
	@./scripts/test.sh

test-fast: bootstrap
	@.venv/bin/pytest -q -m "not integration and not postgres and not browser and not slow"

lint: bootstrap
	@.venv/bin/ruff check . && .venv/bin/ruff format --check .

typecheck: bootstrap
	@.venv/bin/mypy

layers: bootstrap
	@.venv/bin/lint-imports

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache var
