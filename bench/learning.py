"""Does the hive learn? Now ``hive bench learning`` (trials to target on held-out instances).

This script forwards its arguments to that command, e.g.::

    python bench/learning.py --family lmrecipe --family augreg --out bench-learning

The earlier measure (deployment success of generation >= 1 vs generation 0 on held-out
instances) is still in the hive's state: ``hive query "SELECT * FROM deployment_success"`` and
:func:`hive.generations`.
"""

from __future__ import annotations

import sys

from hive._cli import cli

if __name__ == "__main__":
    cli.main(["bench", "learning", *sys.argv[1:]], prog_name="hive")
