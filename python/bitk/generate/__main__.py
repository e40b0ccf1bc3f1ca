"""`python -m bitk.generate`: see bitk.generate.cli."""

import sys

from bitk.generate.cli import main

sys.exit(main())
