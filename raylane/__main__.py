"""`python -m raylane ...` is the `raylane` command."""

from raylane.cli import main

main()
