"""``python -m kvmfpu``: the same entry point as the ``kvmfpu`` command (kvmfpu.entry)."""

from kvmfpu.entry import run

if __name__ == "__main__":
    run()
