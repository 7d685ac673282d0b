"""Models of QEMU behaviour that decides what KVM sees: its view of a vCPU's xsave state
(env), its named CPU models and the guest CPUID it builds from them."""
