"""``python -m nvc``: the same entry point as the ``nvc`` console script."""

import sys

from nvc.commands.cli_main import main

sys.exit(main())
