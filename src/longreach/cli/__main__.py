"""`python -m longreach.cli ...` (what torchrun launches)."""

from longreach.cli import main

main()
