/*
 * The KVM uapi structures kvmfpu uses, as cffi declarations.
 * Source: Linux include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h (v6.18).
 * Flexible array members are declared with the length kvmfpu allocates through
 * cffi's variable-length "struct x *" new(); sizes below are the fixed parts.
 * Read by kvmfpu.uapi (cffi, ABI mode); tests/test_cdefs.py compiles the same text against
 * the system's <linux/kvm.h> and compares every size, offset and constant.
 */

struct kvm_xsave {
    uint32_t region[1024];
    uint32_t extra[];
};

struct kvm_xcr {
    uint32_t xcr;
    uint32_t reserved;
    uint64_t value;
};

struct kvm_xcrs {
    uint32_t nr_xcrs;
    uint32_t flags;
    struct kvm_xcr xcrs[16];
    uint64_t padding[16];
};

struct kvm_cpuid_entry2 {
    uint32_t function;
    uint32_t index;
    uint32_t flags;
    uint32_t eax;
    uint32_t ebx;
    uint32_t ecx;
    uint32_t edx;
    uint32_t padding[3];
};

struct kvm_cpuid2 {
    uint32_t nent;
    uint32_t padding;
    struct kvm_cpuid_entry2 entries[];
};

struct kvm_msr_entry {
    uint32_t index;
    uint32_t reserved;
    uint64_t data;
};

struct kvm_msrs {
    uint32_t nmsrs;
    uint32_t pad;
    struct kvm_msr_entry entries[];
};

struct kvm_msr_list {
    uint32_t nmsrs;
    uint32_t indices[];
};

struct kvm_mp_state {
    uint32_t mp_state;
};

struct kvm_device_attr {
    uint32_t flags;
    uint32_t group;
    uint64_t attr;
    uint64_t addr;
};

/* KVM_GET/SET_VCPU_EVENTS: kvmfpu uses smi.latched_init to deliver INIT. */
struct kvm_vcpu_events {
    struct {
        uint8_t injected;
        uint8_t nr;
        uint8_t has_error_code;
        uint8_t pending;
        uint32_t error_code;
    } exception;
    struct {
        uint8_t injected;
        uint8_t nr;
        uint8_t soft;
        uint8_t shadow;
    } interrupt;
    struct {
        uint8_t injected;
        uint8_t pending;
        uint8_t masked;
        uint8_t pad;
    } nmi;
    uint32_t sipi_vector;
    uint32_t flags;
    struct {
        uint8_t smm;
        uint8_t pending;
        uint8_t smm_inside_nmi;
        uint8_t latched_init;
    } smi;
    struct {
        uint8_t pending;
    } triple_fault;
    uint8_t reserved[26];
    uint8_t exception_has_payload;
    uint64_t exception_payload;
};

/* KVM_GET/SET_SREGS: kvmfpu reads and writes CR0.TS, CR4.OSXSAVE, CR4.PKE and CS.DPL. */
struct kvm_segment {
    uint64_t base;
    uint32_t limit;
    uint16_t selector;
    uint8_t type;
    uint8_t present, dpl, db, s, l, g, avl;
    uint8_t unusable;
    uint8_t padding;
};

struct kvm_dtable {
    uint64_t base;
    uint16_t limit;
    uint16_t padding[3];
};

struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss;
    struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    uint64_t cr0, cr2, cr3, cr4, cr8;
    uint64_t efer;
    uint64_t apic_base;
    uint64_t interrupt_bitmap[4];
};

/*
 * ioctl requests: _IO/_IOR/_IOW/_IOWR(KVMIO = 0xAE, nr, struct), written out because cffi
 * takes integer constants only; tests/test_cdefs.py checks each against <linux/kvm.h>.
 */
#define KVMIO 0xAE
#define KVM_GET_API_VERSION 0xAE00
#define KVM_CREATE_VM 0xAE01
#define KVM_GET_MSR_INDEX_LIST 0xC004AE02
#define KVM_CHECK_EXTENSION 0xAE03
#define KVM_GET_VCPU_MMAP_SIZE 0xAE04
#define KVM_GET_SUPPORTED_CPUID 0xC008AE05
#define KVM_CREATE_VCPU 0xAE41
#define KVM_CREATE_IRQCHIP 0xAE60
#define KVM_RUN 0xAE80
#define KVM_GET_SREGS 0x8138AE83
#define KVM_SET_SREGS 0x4138AE84
#define KVM_GET_MSRS 0xC008AE88
#define KVM_SET_MSRS 0x4008AE89
#define KVM_SET_CPUID2 0x4008AE90
#define KVM_GET_CPUID2 0xC008AE91
#define KVM_GET_MP_STATE 0x8004AE98
#define KVM_SET_MP_STATE 0x4004AE99
#define KVM_GET_VCPU_EVENTS 0x8040AE9F
#define KVM_SET_VCPU_EVENTS 0x4040AEA0
#define KVM_GET_XSAVE 0x9000AEA4
#define KVM_SET_XSAVE 0x5000AEA5
#define KVM_GET_XCRS 0x8188AEA6
#define KVM_SET_XCRS 0x4188AEA7
#define KVM_GET_XSAVE2 0x9000AECF
#define KVM_GET_DEVICE_ATTR 0x4018AEE2
#define KVM_HAS_DEVICE_ATTR 0x4018AEE3

/* Capabilities and constants. */
#define KVM_API_VERSION 12
#define KVM_CAP_IRQCHIP 0
#define KVM_CAP_XSAVE 55
#define KVM_CAP_XCRS 56
#define KVM_CAP_XSAVE2 208
#define KVM_VCPUEVENT_VALID_SMM 8
#define KVM_X86_XCOMP_GUEST_SUPP 0
#define KVM_MP_STATE_RUNNABLE 0
#define KVM_MP_STATE_UNINITIALIZED 1
#define KVM_MP_STATE_INIT_RECEIVED 2
#define KVM_MP_STATE_HALTED 3
#define KVM_MP_STATE_SIPI_RECEIVED 4
