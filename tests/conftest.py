import pathlib

from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

pytest_plugins = ["pytester"]

# An explicit example database: pytester sessions run in-process from temporary
# directories, and hypothesis' default (relative to the working directory) then moves.
settings.register_profile("kvmfpu", database=DirectoryBasedExampleDatabase(
    pathlib.Path(__file__).resolve().parents[1] / ".hypothesis" / "examples"))
settings.load_profile("kvmfpu")
