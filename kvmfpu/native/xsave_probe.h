/* Declarations shared by xsave_probe.c and the cffi builder (cdef). */
#include <stdint.h>

enum {
    KVMFPU_XSAVE64 = 1, KVMFPU_XSAVE, KVMFPU_XSAVEOPT64, KVMFPU_XSAVEC64,
    KVMFPU_XSAVES64, KVMFPU_XRSTOR64, KVMFPU_XRSTOR, KVMFPU_XRSTORS64,
    KVMFPU_FXSAVE64, KVMFPU_FXSAVE, KVMFPU_FXRSTOR64, KVMFPU_FXRSTOR,
    KVMFPU_XGETBV, KVMFPU_XSETBV, KVMFPU_VZEROUPPER, KVMFPU_COPY
};

struct kvmfpu_op {
    int kind;
    uint32_t ecx;
    uint64_t offset;
    uint64_t rfbm;
};

struct kvmfpu_fault {
    int index;
    int signo;
    int trapno;
    int err;
};

uint32_t kvmfpu_probe_fault_state(uint8_t *out, uint32_t max);
void kvmfpu_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t *out);
int kvmfpu_probe_run(const struct kvmfpu_op *ops, int n, uint8_t *mem,
                     uint64_t *results, struct kvmfpu_fault *fault);
