"""``python -m lynshim``: the ``lynshim`` command line in Python (``cli``), which the native ``lynshim``
command (``crates/lynlaunch``) hands every command line to that it does not launch itself."""

import sys

from lynshim.cli import main

sys.exit(main())
