# Developer tasks. `make run` and `make test` are the two commands in the README.
.PHONY: run test test-fast test-faults lint typecheck layers bench bootstrap clean

bootstrap:
	@./scripts/bootstrap.sh

run: bootstrap
	@.venv/bin/triage demo

test:
	@./scripts/test.sh

test-fast: bootstrap
	@.venv/bin/pytest -q -m "not integration and not postgres and not browser and not slow"

# Fault tests under load (PostgreSQL; restarts the local cluster): also part of `make test`.
test-faults: bootstrap
	@./scripts/ensure-postgres.sh
	@TRIAGE_TEST_POSTGRES_URL=$${TRIAGE_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test} \
		.venv/bin/pytest -q -rA tests/test_faults.py

lint: bootstrap
	@.venv/bin/ruff check . && .venv/bin/ruff format --check .

typecheck: bootstrap
	@.venv/bin/mypy

layers: bootstrap
	@.venv/bin/lint-imports

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache var
