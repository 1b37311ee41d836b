"""``python -m correspond.cli`` (tests and benchmarks start the CLI this way)."""

from correspond.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
