"""Ingest benchmark: raw nats-py publish vs hive publish vs end-to-end materialization.

Same as ``hive bench ingest``; usage: ``python bench/ingest.py --events 50000 [--json]``.
"""

import sys

from hive._cli import main

if __name__ == "__main__":
    sys.argv = ["hive", "bench", "ingest", *sys.argv[1:]]
    main()
