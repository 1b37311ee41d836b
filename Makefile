.PHONY: run test lint bench-parse
# One command runs the product: a virtualenv, the package, `correspond serve` on SQLite under ./var.
run:
	bash scripts/run.sh

# One command runs the whole suite: Debian packages when missing, the virtualenv, pytest.
test:
	bash scripts/test.sh

lint:
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench
	.venv/bin/mypy
