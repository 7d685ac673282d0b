"""Executable reproductions of the seed bugs (../shared/seeds in the project history)."""
