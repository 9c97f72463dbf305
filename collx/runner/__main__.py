"""``python -m collx.runner`` is collxrun."""
import sys

from .cli import main

sys.exit(main())
