"""``python -m sysarray``: the same program as the ``sysarray`` command."""
import sys

from sysarray.cli import main

sys.exit(main())
