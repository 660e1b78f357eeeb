"""``python -m hive`` runs the CLI."""

from ._cli import main

main()
