"""`python -m longreach ...`: the same command line as the `longreach` script."""

from longreach.cli import main

main()
