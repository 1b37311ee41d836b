"""``correspond`` and ``python -m correspond``: the command line.

The console script imports this module, not :mod:`correspond.cli`: a ``spawn`` process pool
(the parse workers) re-imports the parent's main script in every worker, and importing the CLI
there would load the API, the store and the IMAP client into each (~100 MB) for nothing.
"""

from __future__ import annotations


def main() -> None:
    from correspond.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
