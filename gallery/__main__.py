"""``python -m gallery``: see :mod:`gallery.cli`."""

import sys

from gallery.cli import main

sys.exit(main())
