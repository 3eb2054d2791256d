"""`python -m clients.python ...` runs voice-cli."""

import sys

from clients.python.cli import main

sys.exit(main())
