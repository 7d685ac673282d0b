"""Helpers for test harnesses that drive kvmfpu (and kvmfpu's own tests)."""

from kvmfpu.testing.areas import booted, compacted_area, component_data, pattern, standard_area

__all__ = ["booted", "compacted_area", "component_data", "pattern", "standard_area"]
