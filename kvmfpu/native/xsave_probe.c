/*
 * kvmfpu real-CPU oracle: run a short sequence of XSAVE-family instructions
 * in user mode and report results and the first fault.
 *
 * The sequence runs with nothing between the instructions that touches x87,
 * SSE or AVX state: this file is compiled with -mgeneral-regs-only and the
 * loop calls no libc function (glibc's memcpy/memset use AVX registers and
 * would change XINUSE).  The caller's own FPU state is saved first and
 * restored last, so Python never sees the random state we load.
 *
 * A fault arrives as a signal; the handler records the trap number and error
 * code the kernel put in the ucontext (the real vector: 6 #UD, 7 #NM,
 * 13 #GP, 14 #PF, 17 #AC) and siglongjmps back.
 */
#include <stdint.h>
#include <string.h>
#include <signal.h>
#include <setjmp.h>
#include <ucontext.h>

#include "xsave_probe.h"

static sigjmp_buf probe_jmp;
static volatile int probe_signo, probe_trapno, probe_err;

/*
 * The register state at the fault, as the kernel wrote it to the signal frame
 * (XSAVE format; _fpx_sw_bytes at offset 464 give its size).  It shows whether
 * the faulting instruction changed anything.
 */
static uint8_t probe_fault_state[1 << 16] __attribute__((aligned(64)));
static volatile uint32_t probe_fault_state_len;

#ifndef FP_XSTATE_MAGIC1
#define FP_XSTATE_MAGIC1 0x46505853u
#endif

static void probe_handler(int sig, siginfo_t *si, void *uctx)
{
    ucontext_t *uc = uctx;
    const uint8_t *fp = (const uint8_t *)uc->uc_mcontext.fpregs;
    uint32_t len = 512, magic, i;

    (void)si;
    probe_signo = sig;
    probe_trapno = (int)uc->uc_mcontext.gregs[REG_TRAPNO];
    probe_err = (int)uc->uc_mcontext.gregs[REG_ERR];
    probe_fault_state_len = 0;
    if (fp) {
        magic = *(const uint32_t *)(fp + 464);
        if (magic == FP_XSTATE_MAGIC1)
            len = *(const uint32_t *)(fp + 464 + 16);   /* xstate_size */
        if (len > sizeof(probe_fault_state))
            len = sizeof(probe_fault_state);
        for (i = 0; i < len; i++)
            probe_fault_state[i] = fp[i];
        probe_fault_state_len = len;
    }
    siglongjmp(probe_jmp, 1);
}

uint32_t kvmfpu_probe_fault_state(uint8_t *out, uint32_t max)
{
    uint32_t i, n = probe_fault_state_len < max ? probe_fault_state_len : max;

    for (i = 0; i < n; i++)
        out[i] = probe_fault_state[i];
    return n;
}

void kvmfpu_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t *out)
{
    uint32_t a, b, c, d;

    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(subleaf));
    out[0] = a; out[1] = b; out[2] = c; out[3] = d;
}

/* The caller's FPU state lives here while the sequence runs. */
static uint8_t probe_saved[1 << 16] __attribute__((aligned(64)));

static void run_op(const struct kvmfpu_op *op, uint8_t *mem, uint64_t *result)
{
    uint8_t *p = mem + op->offset;
    uint32_t lo = (uint32_t)op->rfbm, hi = (uint32_t)(op->rfbm >> 32);
    uint32_t a, d;

    switch (op->kind) {
    case KVMFPU_XSAVE64:
        __asm__ volatile("xsave64 (%0)" :: "r"(p), "a"(lo), "d"(hi) : "memory");
        break;
    case KVMFPU_XSAVE:
        __asm__ volatile("xsave (%0)" :: "r"(p), "a"(lo), "d"(hi) : "memory");
        break;
    case KVMFPU_XSAVEOPT64:
        __asm__ volatile("xsaveopt64 (%0)" :: "r"(p), "a"(lo), "d"(hi) : "memory");
        break;
    case KVMFPU_XSAVEC64:
        __asm__ volatile("xsavec64 (%0)" :: "r"(p), "a"(lo), "d"(hi) : "memory");
        break;
    case KVMFPU_XSAVES64:
        __asm__ volatile("xsaves64 (%0)" :: "r"(p), "a"(lo), "d"(hi) : "memory");
        break;
    case KVMFPU_XRSTOR64:
        __asm__ volatile("xrstor64 (%0)" :: "r"(p), "a"(lo), "d"(hi) : "memory");
        break;
    case KVMFPU_XRSTOR:
        __asm__ volatile("xrstor (%0)" :: "r"(p), "a"(lo), "d"(hi) : "memory");
        break;
    case KVMFPU_XRSTORS64:
        __asm__ volatile("xrstors64 (%0)" :: "r"(p), "a"(lo), "d"(hi) : "memory");
        break;
    case KVMFPU_FXSAVE64:
        __asm__ volatile("fxsave64 (%0)" :: "r"(p) : "memory");
        break;
    case KVMFPU_FXSAVE:
        __asm__ volatile("fxsave (%0)" :: "r"(p) : "memory");
        break;
    case KVMFPU_FXRSTOR64:
        __asm__ volatile("fxrstor64 (%0)" :: "r"(p) : "memory");
        break;
    case KVMFPU_FXRSTOR:
        __asm__ volatile("fxrstor (%0)" :: "r"(p) : "memory");
        break;
    case KVMFPU_XGETBV:
        __asm__ volatile("xgetbv" : "=a"(a), "=d"(d) : "c"(op->ecx));
        *result = ((uint64_t)d << 32) | a;
        break;
    case KVMFPU_XSETBV:
        __asm__ volatile("xsetbv" :: "a"(lo), "d"(hi), "c"(op->ecx));
        break;
    case KVMFPU_VZEROUPPER:
        __asm__ volatile("vzeroupper");
        break;
    case KVMFPU_COPY: {
        /* A plain store between instructions: copy op->ecx bytes from op->rfbm to offset. */
        const volatile uint8_t *src = mem + op->rfbm;
        volatile uint8_t *dst = p;
        uint32_t k;

        for (k = 0; k < op->ecx; k++)
            dst[k] = src[k];
        break;
    }
    default:
        break;
    }
}

int kvmfpu_probe_run(const struct kvmfpu_op *ops, int n, uint8_t *mem,
                     uint64_t *results, struct kvmfpu_fault *fault)
{
    struct sigaction sa, old_segv, old_ill, old_bus, old_fpe;
    volatile int i = 0;
    int done;

    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = probe_handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGILL, &sa, &old_ill);
    sigaction(SIGBUS, &sa, &old_bus);
    sigaction(SIGFPE, &sa, &old_fpe);

    fault->index = -1;
    __asm__ volatile("xsave64 (%0)" :: "r"(probe_saved), "a"(-1), "d"(-1) : "memory");

    if (sigsetjmp(probe_jmp, 1) == 0) {
        for (; i < n; i++)
            run_op(&ops[i], mem, &results[i]);
        done = 1;
    } else {
        done = 0;
    }

    __asm__ volatile("xrstor64 (%0)" :: "r"(probe_saved), "a"(-1), "d"(-1) : "memory");

    sigaction(SIGSEGV, &old_segv, NULL);
    sigaction(SIGILL, &old_ill, NULL);
    sigaction(SIGBUS, &old_bus, NULL);
    sigaction(SIGFPE, &old_fpe, NULL);

    if (!done) {
        fault->index = i;
        fault->signo = probe_signo;
        fault->trapno = probe_trapno;
        fault->err = probe_err;
    }
    return done ? n : i;
}
