"""``python -m zoomloc``: the same as the ``zoomloc`` command (used under ``torchrun -m``)."""

import sys

from zoomloc.cli.main import main

sys.exit(main())
