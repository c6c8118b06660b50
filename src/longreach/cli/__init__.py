"""`longreach` command line: thin commands over the library (see `longreach --help`)."""

import sys

# Importing a module registers its commands on the apps.
from longreach.cli import bench, data, demo, evaluate, model, rag, report, score, serve, sft, train  # noqa: F401
from longreach.cli.apps import app
from longreach.errors import InputError, RunStopped


def main() -> None:
    try:
        app()
    except InputError as e:  # bad input: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except RunStopped as e:  # a STOP file or SIGTERM: saved, resumable
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(3)
