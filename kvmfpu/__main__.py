"""``python -m kvmfpu``: the same entry point as the ``kvmfpu`` command (kvmfpu.entry)."""

import sys

from kvmfpu.entry import main

if __name__ == "__main__":
    sys.exit(main())
