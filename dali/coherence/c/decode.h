/*
 * Which x86-64 instructions matter to the coherence model, from their bytes: the three cache
 * flushes (with their memory operand, as QEMU's plugin API gives no memory callback for them),
 * the fences, the non-temporal stores (whose memory callbacks give the address already), and
 * what changes or invalidates the vCPU's translations (MOV to CR3; INVLPG, INVPCID, MOV to CR0
 * or CR4), which the plugin follows.
 * Pure C, no QEMU: tests/coherence/model_test.c checks it on the host.
 */

#ifndef DALI_COHERENCE_DECODE_H
#define DALI_COHERENCE_DECODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum coh_insn_kind {
    COH_INSN_NONE,
    COH_INSN_CLFLUSH,     /*    0F AE /7 */
    COH_INSN_CLFLUSHOPT,  /* 66 0F AE /7 */
    COH_INSN_CLWB,        /* 66 0F AE /6 */
    COH_INSN_SFENCE,      /*    0F AE F8 */
    COH_INSN_LFENCE,      /*    0F AE E8 */
    COH_INSN_MFENCE,      /*    0F AE F0 */
    COH_INSN_NT_STORE,    /* MOVNTI, MOVNTDQ, MOVNTPS/PD, MOVNTQ, their VEX/EVEX forms, ... */
    COH_INSN_MOV_CR3,     /*    0F 22 /3, mod 11: a new address space; base = the source register */
    COH_INSN_TLB_FLUSH,   /* INVLPG (0F 01 /7), INVPCID (66 0F 38 82), MOV to CR0 or CR4 (0F 22 /0, /4):
                           * the guest invalidates translations (the plugin forgets its pages) */
};

enum coh_seg { COH_SEG_NONE, COH_SEG_FS, COH_SEG_GS };

/* The memory operand: base + index * scale + disp (+ the next instruction's address if
 * rip_relative), wrapped at 4 GiB if addr32, plus the fs or gs base. Registers are numbered as
 * ModRM numbers them: 0 rax, 1 rcx, 2 rdx, 3 rbx, 4 rsp, 5 rbp, 6 rsi, 7 rdi, 8-15 r8-r15. */
struct coh_insn {
    enum coh_insn_kind kind;
    int base;             /* 0-15, or -1 */
    int index;            /* 0-15, or -1 */
    unsigned scale;       /* 1, 2, 4 or 8 */
    int64_t disp;
    bool rip_relative;
    bool addr32;          /* a 67 prefix */
    enum coh_seg seg;
    unsigned length;      /* bytes, prefixes included */
};

/* Classify the instruction at bytes[0..len); the operand is filled for the three flushes, the
 * source register for MOV to CR3. */
void coh_decode(const uint8_t *bytes, size_t len, struct coh_insn *out);

const char *coh_insn_kind_name(enum coh_insn_kind kind);

#endif
