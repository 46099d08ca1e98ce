"""``python -m sqz.cli``: the ``sqz`` command."""

import sys

from sqz.cli import main

sys.exit(main())
