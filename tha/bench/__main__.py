"""``python -m tha.bench``: ``python -m tha bench`` (tha/cli/bench.py)."""
import sys

from ..cli.bench import main

sys.exit(main())
