"""``python -m service``: see ``service.cli`` (``--help`` lists the options and settings)."""

from __future__ import annotations

import sys

from service.cli import main

if __name__ == "__main__":
    sys.exit(main())
