/*
 * A decoder for the few x86-64 instructions the coherence model needs (decode.h). It reads
 * legacy prefixes and REX, then the opcode; anything it does not recognise is NONE, which only
 * means "nothing beyond its memory accesses", never an error.
 *
 * In 64-bit mode: the segment overrides 2E 36 3E 26 are ignored by the CPU, 64 and 65 add the
 * fs and gs bases; a REX counts only right before the opcode; C4, C5 and 62 always start a
 * VEX or EVEX prefix. The mandatory prefix that tells CLFLUSH from CLFLUSHOPT (66) is the last
 * of F2/F3 if there is one, else 66.
 */

#include "decode.h"

#include <string.h>

#define MAX_INSN 15

struct prefixes {
    unsigned mandatory;  /* 0, 0x66, 0xF2 or 0xF3 */
    bool opsize;         /* a 66 was seen */
    unsigned rep;        /* the last of F2/F3, or 0 */
    unsigned rex;        /* 0x40-0x4F, or 0 */
    bool addr32;
    enum coh_seg seg;
};

/* Reads the prefixes; returns the opcode's index (len if the bytes end first). */
static size_t read_prefixes(const uint8_t *b, size_t len, struct prefixes *p)
{
    size_t i = 0;
    for (; i < len && i < MAX_INSN; i++) {
        uint8_t c = b[i];
        if (c >= 0x40 && c <= 0x4F) {
            p->rex = c;
            continue;
        }
        if (c == 0x66)
            p->opsize = true;
        else if (c == 0xF2 || c == 0xF3)
            p->rep = c;
        else if (c == 0x67)
            p->addr32 = true;
        else if (c == 0x64)
            p->seg = COH_SEG_FS;
        else if (c == 0x65)
            p->seg = COH_SEG_GS;
        else if (c == 0x2E || c == 0x36 || c == 0x3E || c == 0x26 || c == 0xF0)
            ;
        else
            break;
        p->rex = 0;  /* a REX followed by a legacy prefix is ignored */
    }
    p->mandatory = p->rep ? p->rep : p->opsize ? 0x66 : 0;
    return i;
}

/* The REX (or VEX/EVEX) bits that extend ModRM's registers. */
struct ext {
    unsigned x, b;  /* 0 or 8 */
};

/* Decodes the ModRM at b[i] (and SIB and displacement) into d; returns the length so far, or 0
 * if the bytes end first. */
static size_t read_modrm(const uint8_t *b, size_t len, size_t i, struct ext e, struct coh_insn *d)
{
    if (i >= len)
        return 0;
    unsigned mod = b[i] >> 6, rm = b[i] & 7;
    i++;
    d->base = (int)(rm | e.b);
    if (mod == 3)
        return i;
    if (rm == 4) {  /* SIB */
        if (i >= len)
            return 0;
        unsigned sib = b[i++], index = ((sib >> 3) & 7) | e.x, base = sib & 7;
        d->scale = 1u << (sib >> 6);
        d->index = index == 4 ? -1 : (int)index;  /* 100 without REX.X: no index (r12 is one) */
        d->base = mod == 0 && base == 5 ? -1 : (int)(base | e.b);  /* then disp32, no base */
        if (d->base < 0)
            mod = 2;
    } else if (mod == 0 && rm == 5) {
        d->base = -1;
        d->rip_relative = true;
        mod = 2;
    }
    size_t n = mod == 1 ? 1 : mod == 2 ? 4 : 0;
    if (i + n > len)
        return 0;
    if (n == 1)
        d->disp = (int8_t)b[i];
    else if (n == 4)
        d->disp = (int32_t)((uint32_t)b[i] | (uint32_t)b[i + 1] << 8 | (uint32_t)b[i + 2] << 16
                            | (uint32_t)b[i + 3] << 24);
    return i + n;
}

static unsigned mod_of(const uint8_t *b, size_t len, size_t i)
{
    return i < len ? b[i] >> 6 : 0;
}

static unsigned reg_of(const uint8_t *b, size_t len, size_t i)
{
    return i < len ? (b[i] >> 3) & 7 : 0;
}

/* 0F AE: the flushes with a memory operand, the fences without one. Everything else of the
 * group (fxsave, xsaveopt, tpause, rdfsbase, ...) is NONE. */
static enum coh_insn_kind group15(const uint8_t *b, size_t len, size_t i, const struct prefixes *p)
{
    unsigned mod = mod_of(b, len, i), reg = reg_of(b, len, i);
    if (mod == 3) {
        if (p->mandatory != 0)
            return COH_INSN_NONE;  /* 66 /6 is tpause, F3 /5 incssp, ... */
        return reg == 5 ? COH_INSN_LFENCE : reg == 6 ? COH_INSN_MFENCE
             : reg == 7 ? COH_INSN_SFENCE : COH_INSN_NONE;
    }
    if (reg == 7 && p->mandatory == 0)
        return COH_INSN_CLFLUSH;
    if (reg == 7 && p->mandatory == 0x66)
        return COH_INSN_CLFLUSHOPT;
    if (reg == 6 && p->mandatory == 0x66)
        return COH_INSN_CLWB;
    return COH_INSN_NONE;
}

/* The non-temporal stores of the legacy 0F map (op is the byte after 0F). */
static bool legacy_nt(const uint8_t *b, size_t len, size_t i, unsigned op, const struct prefixes *p)
{
    unsigned mod = mod_of(b, len, i);
    switch (op) {
    case 0xC3: return mod != 3 && p->mandatory == 0;              /* movnti */
    case 0x2B: return mod != 3;                                   /* movntps/pd, movntss/sd */
    case 0xE7: return mod != 3 && (p->mandatory == 0 || p->mandatory == 0x66); /* movntq/dq */
    case 0xF7: return mod == 3 && (p->mandatory == 0 || p->mandatory == 0x66); /* maskmovq/dqu */
    }
    return false;
}

/* 0F 38 F8 with 66 is movdir64b, 0F 38 F9 without is movdiri: both are write-combining
 * stores that bypass the cache, as non-temporal stores do. */
static bool direct_store(const uint8_t *b, size_t len, size_t i, unsigned op, const struct prefixes *p)
{
    if (mod_of(b, len, i) == 3)
        return false;
    return (op == 0xF8 && p->mandatory == 0x66) || (op == 0xF9 && p->mandatory == 0);
}

/* VEX (C5, C4) and EVEX (62): vmovntps (0F 2B), vmovntpd (66 0F 2B), vmovntdq (66 0F E7),
 * vmaskmovdqu (66 0F F7, VEX only). Returns the ModRM's index in *modrm. */
static enum coh_insn_kind vex(const uint8_t *b, size_t len, size_t i, size_t *modrm, struct ext *e)
{
    unsigned map, pp, op;
    size_t at;
    if (b[i] == 0xC5) {
        if (i + 3 > len)
            return COH_INSN_NONE;
        map = 1, pp = b[i + 1] & 3, at = i + 2;
        e->x = e->b = 0;  /* C5 has no X or B */
    } else {
        size_t n = b[i] == 0xC4 ? 3 : 4;  /* C4 or 62: the map is in the first payload byte */
        if (i + n + 1 > len)
            return COH_INSN_NONE;
        map = b[i + 1] & (b[i] == 0xC4 ? 0x1f : 0x07), pp = b[i + 2] & 3, at = i + n;
        e->x = b[i + 1] & 0x40 ? 0 : 8;  /* inverted in the prefix */
        e->b = b[i + 1] & 0x20 ? 0 : 8;
    }
    op = b[at];
    *modrm = at + 1;
    unsigned mod = mod_of(b, len, *modrm);
    if (map != 1)
        return COH_INSN_NONE;
    if ((op == 0x2B && pp <= 1 && mod != 3) || (op == 0xE7 && pp == 1 && mod != 3)
        || (op == 0xF7 && pp == 1 && mod == 3 && b[i] != 0x62))
        return COH_INSN_NT_STORE;
    return COH_INSN_NONE;
}

static bool is_flush(enum coh_insn_kind k)
{
    return k == COH_INSN_CLFLUSH || k == COH_INSN_CLFLUSHOPT || k == COH_INSN_CLWB;
}

static enum coh_insn_kind classify(const uint8_t *b, size_t len, size_t i,
                                   const struct prefixes *p, size_t *modrm, struct ext *e)
{
    if (b[i] == 0xC4 || b[i] == 0xC5 || b[i] == 0x62)
        return vex(b, len, i, modrm, e);
    if (b[i] != 0x0F || i + 1 >= len)
        return COH_INSN_NONE;
    unsigned op = b[i + 1];
    if (op == 0x38) {
        *modrm = i + 3;
        if (i + 3 < len && b[i + 2] == 0x82 && p->mandatory == 0x66 && mod_of(b, len, i + 3) != 3)
            return COH_INSN_TLB_FLUSH;  /* invpcid */
        return i + 2 < len && direct_store(b, len, i + 3, b[i + 2], p) ? COH_INSN_NT_STORE
                                                                       : COH_INSN_NONE;
    }
    *modrm = i + 2;
    if (op == 0xAE)
        return group15(b, len, i + 2, p);
    if (i + 2 >= len)
        return COH_INSN_NONE;
    unsigned mod = mod_of(b, len, i + 2), reg = reg_of(b, len, i + 2);
    unsigned cr = reg | (p->rex & 4 ? 8 : 0);  /* REX.R: 44 0F 22 C0 is CR8, the TPR */
    if (op == 0x22 && mod == 3 && cr == 3)
        return COH_INSN_MOV_CR3;
    if (op == 0x22 && mod == 3 && (cr == 0 || cr == 4))  /* paging on or off, PGE, PCIDE */
        return COH_INSN_TLB_FLUSH;
    if (op == 0x01 && mod != 3 && reg == 7)  /* invlpg; mod 11 of /7 is swapgs, rdtscp, ... */
        return COH_INSN_TLB_FLUSH;
    return legacy_nt(b, len, i + 2, op, p) ? COH_INSN_NT_STORE : COH_INSN_NONE;
}

void coh_decode(const uint8_t *bytes, size_t len, struct coh_insn *out)
{
    memset(out, 0, sizeof *out);
    out->base = out->index = -1;
    out->scale = 1;
    if (len > MAX_INSN)
        len = MAX_INSN;
    struct prefixes p = { 0 };
    size_t i = read_prefixes(bytes, len, &p), modrm = 0;
    if (i >= len)
        return;
    struct ext e = { p.rex & 2 ? 8 : 0, p.rex & 1 ? 8 : 0 };
    enum coh_insn_kind kind = classify(bytes, len, i, &p, &modrm, &e);
    if (kind == COH_INSN_NONE)
        return;
    if (kind == COH_INSN_MOV_CR3) {  /* a register operand: ModRM's rm, extended by REX.B */
        out->kind = kind;
        out->base = (int)(bytes[modrm] & 7) + (int)e.b;
        out->length = (unsigned)modrm + 1;
        return;
    }
    size_t end = read_modrm(bytes, len, modrm, e, out);
    if (end == 0) {  /* cut short: not an instruction we can use */
        memset(out, 0, sizeof *out);
        out->base = out->index = -1;
        out->scale = 1;
        return;
    }
    out->kind = kind;
    out->length = (unsigned)end;
    out->addr32 = p.addr32;
    out->seg = p.seg;
    if (!is_flush(kind)) {  /* only a flush's operand is used; the rest say "no operand" */
        out->base = out->index = -1;
        out->scale = 1;
        out->disp = 0;
        out->rip_relative = false;
    }
}

const char *coh_insn_kind_name(enum coh_insn_kind kind)
{
    static const char *const names[] = {
        "none", "clflush", "clflushopt", "clwb", "sfence", "lfence", "mfence", "nt_store",
        "mov_cr3", "tlb_flush",
    };
    return (unsigned)kind < sizeof names / sizeof names[0] ? names[kind] : "unknown";
}
