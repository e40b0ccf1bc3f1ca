"""`python -m bitk.gguf` runs the `bitk-pack` CLI."""

import sys

from bitk.gguf.cli import main

sys.exit(main())
