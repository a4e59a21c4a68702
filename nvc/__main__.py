"""``python -m nvc``: the same entry point as the ``nvc`` console script."""

import sys

from nvc.request.argv import main

sys.exit(main())
