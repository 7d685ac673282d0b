"""The Linux x86 FPU core as KVM uses it: fpstate, fpu_guest, the kernel's XSAVES/XRSTORS on
the emulated core, and the uABI copy functions, per kernel version."""
