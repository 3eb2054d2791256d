"""`python -m voice_client ...` runs voice-cli."""

import sys

from voice_client.cli import main

sys.exit(main())
