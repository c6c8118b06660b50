"""`longreach` command line: thin commands over the library (see `longreach --help`)."""

import sys

from longreach.cli.apps import app
from longreach.errors import InputError

# Importing a module registers its commands on the apps.
from longreach.cli import data, model, train, evaluate, score, rag, sft, serve, report, demo, bench  # noqa: E402,F401


def main() -> None:
    try:
        app()
    except InputError as e:  # bad input: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
