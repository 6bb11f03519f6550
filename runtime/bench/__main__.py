"""`python -m runtime.bench`: the same as the `edge-bench` command."""
import sys

from runtime.bench.cli import main

sys.exit(main())
