"""``python -m collx.bench``: same as the ``collx-bench`` console script."""
import sys

from .cli import main

sys.exit(main())
