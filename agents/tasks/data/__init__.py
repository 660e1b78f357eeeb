"""Data shipped with the built-in tasks (``corpus.txt``: see README.md for source and licence)."""
