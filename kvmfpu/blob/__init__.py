"""Captured xsave state: reading it from files (raw KVM buffers, hex dumps, ELF cores,
signal frames, QEMU migration streams), finding its layout, decoding, validating against a
host and kernel, diffing and converting."""
