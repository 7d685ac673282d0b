"""Capability numbers (include/uapi/linux/kvm.h)."""

KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_XSAVE2 = 208
