"""``python -m lynshim`` is the ``lynshim`` command."""

import sys

from lynshim.cli import main

sys.exit(main())
