"""``python -m gallery``: see :mod:`gallery.app.cli`."""

import sys

from gallery.app.cli import main

sys.exit(main())
