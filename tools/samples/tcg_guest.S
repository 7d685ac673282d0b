/* A multiboot guest for tools/make_samples.py: it enables x87, SSE, AVX and PKRU in XCR0,
 * leaves values in ST0/ST1, XMM1, YMM3, MXCSR and PKRU, round-trips them through
 * XSAVE/XRSTOR the way an OS context switch does, and halts. Built with GNU as --32. */
        .code32
        .text
        .align 4
        .long 0x1BADB002, 0, -0x1BADB002          /* multiboot v1 header, no flags */
        .globl _start
_start:
        mov %cr4, %eax                             /* OSFXSR, OSXMMEXCPT, OSXSAVE, PKE */
        or $((1<<9)|(1<<10)|(1<<18)|(1<<22)), %eax
        mov %eax, %cr4
        mov %cr0, %eax                             /* EM=0, MP=1, NE=1 */
        and $~(1<<2), %eax
        or $((1<<1)|(1<<5)), %eax
        mov %eax, %cr0
        xor %ecx, %ecx
        mov $0x207, %eax                           /* XCR0 = x87|SSE|AVX|PKRU */
        xor %edx, %edx
        xsetbv
        fninit
        fld1
        fldpi                                      /* ST0 = pi, ST1 = 1.0, TOP = 6 */
        ldmxcsr mxcsr_val
        vmovdqu ydata, %ymm3
        movdqu xdata, %xmm1
        mov $0x55555554, %eax                      /* Linux's init_pkru_value */
        xor %ecx, %ecx
        xor %edx, %edx
        wrpkru
        mov $-1, %eax
        mov $-1, %edx
        xsave area
        xrstor area
1:      hlt
        jmp 1b
        .data
        .align 64
ydata:  .quad 0x3ff0000000000000, 0x4000000000000000, 0x4008000000000000, 0x4010000000000000
xdata:  .quad 0x1111111122222222, 0x3333333344444444
mxcsr_val: .long 0x9fc0
        .align 64
area:   .fill 4096, 1, 0
