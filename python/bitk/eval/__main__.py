"""`python -m bitk.eval`: see bitk.eval.cli."""

import sys

from bitk.eval.cli import main

sys.exit(main())
