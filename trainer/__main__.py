"""`python -m trainer` is `blurflag-train`."""

import sys

from trainer.cli import main

sys.exit(main())
