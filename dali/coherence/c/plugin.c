/*
 * The QEMU side of the coherence checker: a TCG plugin every node's QEMU loads, feeding that
 * node's accesses to the shared FAM, its flushes and its fences to the model (model.h), which
 * all nodes' plugins share through one mapped file.
 *
 *   -plugin libdalicoherence.so,model=/abs/path/coherence.model,node=N,base=GPA
 *
 * node is 0..7; base is the guest-physical address the NVDIMM is mapped at (decimal or 0x hex).
 * The FAM's size and the mode come from the model's header. Any problem at start is one line,
 * "dali-coherence: <what is wrong>", on stderr, and QEMU refuses to start.
 *
 * Built (QEMU 10.0's plugin API, QEMU_PLUGIN_VERSION 4) by
 *   gcc -O2 -shared -fPIC -Wall $(pkg-config --cflags glib-2.0) -I<dir of qemu-plugin.h> \
 *       plugin.c model.c decode.c -o libdalicoherence.so
 *
 * What is instrumented:
 *  - every instruction's memory accesses: those that land in the FAM are loads, stores or
 *    non-temporal stores of the model (the NT flag comes from decoding the instruction);
 *  - CLFLUSH, CLFLUSHOPT, CLWB: QEMU gives them no memory access, so their operand is decoded
 *    (decode.c) and computed from the registers when they execute;
 *  - MOV to CR3, and INVLPG, INVPCID, MOV to CR0 or CR4: the address space the vCPU runs on,
 *    and when it forgets the pages it remembered as the FAM's or not ("Which pages ...");
 *  - SFENCE, LFENCE, MFENCE: counted only. A flush takes effect at once in the model: whether a
 *    flush is ordered before a later store by a fence is a persistence checker's business, not
 *    a coherence checker's.
 * The decoder reads instructions as 64-bit code; 16- and 32-bit code (firmware) does not flush
 * the FAM, and its rare misread operand only lands in the unresolved count.
 */

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>
#include <qemu-plugin.h>

#include "decode.h"
#include "model.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

static struct coh_model model;
static const char *model_path;  /* argv lives as long as the plugin */
static unsigned node;
static uint64_t base;  /* guest-physical address of FAM offset 0 */

/* ---- the page table: a flush's virtual address to a FAM offset ----------------------------
 *
 * QEMU 10.0's plugin API has no virtual-to-physical translation, and a flush makes no memory
 * access that would give one. So each node learns its mapping from its own accesses to the
 * FAM: a direct-mapped table from (address space, virtual page) to the FAM page behind it.
 * The address space is the page-table root the vCPU runs on (CR3, followed through every
 * MOV to CR3 the guest kernel makes: "Address spaces" below); kernel addresses are one space
 * shared by every process. Without it, the agent's own programs (which map their libraries
 * where a static program of the user's maps the device, under norandmaps) made a flush find
 * another process's page, and drop it (seen: a CLWB never applied).
 *
 * Only accesses to the FAM write the table, so nothing else a node does (stacks, interrupts
 * between a store and its flush) pushes a FAM page out of it. A page that stops being the FAM
 * at the same address in the same space (munmap, then something else mapped there) keeps its
 * entry until a FAM access replaces it; a flush there is then applied to the old FAM page.
 * That is accepted: a program that flushes memory it no longer maps has no line to flush.
 *
 * Entries are written under a lock (rarely: most FAM accesses find theirs there already, read
 * without it) and read under it by flushes, which are rare next to loads and stores. */

#define PAGE_SHIFT 12
#define TABLE_BITS 12
#define TABLE_SIZE (1u << TABLE_BITS)
#define UNKNOWN UINT64_MAX

struct page_entry {
    uint64_t space;  /* page-table root, | 1 when the entry is valid */
    uint64_t vpage;
    uint64_t fam_page;
};

static struct page_entry table[TABLE_SIZE];
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;

static struct page_entry *entry_of(uint64_t space, uint64_t vaddr)
{
    uint64_t vpage = vaddr >> PAGE_SHIFT;
    return &table[(vpage ^ (space >> PAGE_SHIFT) * 0x9E3779B97F4A7C15ull) & (TABLE_SIZE - 1)];
}

static void learn(uint64_t space, uint64_t vaddr, uint64_t fam_page)
{
    struct page_entry *e = entry_of(space, vaddr);
    uint64_t vpage = vaddr >> PAGE_SHIFT;
    if (__atomic_load_n(&e->space, __ATOMIC_RELAXED) == (space | 1)
        && __atomic_load_n(&e->vpage, __ATOMIC_RELAXED) == vpage
        && __atomic_load_n(&e->fam_page, __ATOMIC_RELAXED) == fam_page)
        return;
    pthread_mutex_lock(&table_lock);
    __atomic_store_n(&e->space, space | 1, __ATOMIC_RELAXED);
    __atomic_store_n(&e->vpage, vpage, __ATOMIC_RELAXED);
    __atomic_store_n(&e->fam_page, fam_page, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&table_lock);
}

/* The FAM page behind vaddr's page in that space, or UNKNOWN. */
static uint64_t look_up(uint64_t space, uint64_t vaddr)
{
    struct page_entry *e = entry_of(space, vaddr);
    pthread_mutex_lock(&table_lock);
    uint64_t page = e->space == (space | 1) && e->vpage == vaddr >> PAGE_SHIFT ? e->fam_page : UNKNOWN;
    pthread_mutex_unlock(&table_lock);
    return page;
}

/* ---- flushes waiting for their page -------------------------------------------------------
 *
 * A flush of a page the table does not know waits here, and is applied just before the next
 * access of this node that maps that virtual page: program order puts it there relative to
 * that access. If that access is outside the FAM the flush was not the FAM's, and is dropped.
 * At most 64 wait; a 65th pushes the oldest out, counted as flush_unresolved. */

#define PENDING_MAX 64

struct pending_flush {
    uint64_t space, vaddr, pc;
    enum coh_flush_kind kind;
};

static struct {
    pthread_mutex_t lock;
    struct pending_flush q[PENDING_MAX];  /* oldest first */
    unsigned count;
    uint64_t pages;  /* bit (vpage % 64) set for each waiting flush: a lock-free "maybe" */
} pending = { .lock = PTHREAD_MUTEX_INITIALIZER };

static uint64_t page_bit(uint64_t vaddr)
{
    return 1ull << ((vaddr >> PAGE_SHIFT) & 63);
}

static void recompute_pages(void)
{
    uint64_t pages = 0;
    for (unsigned i = 0; i < pending.count; i++)
        pages |= page_bit(pending.q[i].vaddr);
    __atomic_store_n(&pending.pages, pages, __ATOMIC_RELEASE);
}

static void wait_for_page(uint64_t space, uint64_t vaddr, uint64_t pc, enum coh_flush_kind kind)
{
    pthread_mutex_lock(&pending.lock);
    if (pending.count == PENDING_MAX) {
        memmove(&pending.q[0], &pending.q[1], sizeof pending.q[0] * (PENDING_MAX - 1));
        pending.count--;
        coh_count(&model, node, COH_FLUSH_UNRESOLVED, 1);
    }
    pending.q[pending.count++] = (struct pending_flush){ space, vaddr, pc, kind };
    recompute_pages();
    pthread_mutex_unlock(&pending.lock);
}

/* vaddr's page is now known to be fam_page (or NOT_FAM): apply its waiting flushes, oldest
 * first, and keep the others. */
#define NOT_FAM UINT64_MAX

static void resolve_waiting(uint64_t space, uint64_t vaddr, uint64_t fam_page);

static inline __attribute__((always_inline))
void resolve(uint64_t space, uint64_t vaddr, uint64_t fam_page)
{
    if (__builtin_expect(__atomic_load_n(&pending.pages, __ATOMIC_ACQUIRE) & page_bit(vaddr), 0))
        resolve_waiting(space, vaddr, fam_page);
}

static void resolve_waiting(uint64_t space, uint64_t vaddr, uint64_t fam_page)
{
    uint64_t vpage = vaddr >> PAGE_SHIFT;
    pthread_mutex_lock(&pending.lock);
    unsigned kept = 0;
    for (unsigned i = 0; i < pending.count; i++) {
        struct pending_flush f = pending.q[i];
        if (f.vaddr >> PAGE_SHIFT != vpage || f.space != space)
            pending.q[kept++] = f;
        else if (fam_page != NOT_FAM)
            coh_flush(&model, node, fam_page << PAGE_SHIFT | (f.vaddr & ((1u << PAGE_SHIFT) - 1)),
                      f.kind, f.pc);
    }
    pending.count = kept;
    recompute_pages();
    pthread_mutex_unlock(&pending.lock);
}

/* ---- registers, for a flush's operand ------------------------------------------------------
 *
 * Handles are per vCPU, found by name when the vCPU starts; the names are those of QEMU's
 * gdbstub for x86-64. Indexed as ModRM numbers registers. */

static const char *const gpr_names[16] = {
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
};

#define IO_PAGES 64
#define MEMO_PAGES 512  /* per vCPU: 16 KiB, in the host's L1 or L2 next to QEMU's own TLB */

/* What a lookup said about a page: the FAM page behind it, or NOT_FAM ("Which pages ..."). */
struct page_memo {
    uint64_t space, vpage, fam_page;
    uint32_t generation;  /* valid while it is the vCPU's */
};

struct vcpu {
    struct qemu_plugin_register *gpr[16], *fs_base, *gs_base;
    GByteArray *buf;  /* the vCPU's own: read_register appends to it */
    uint64_t space;   /* the page-table root it runs on (CR3 without its flags and PCID) */
    uint64_t io_pages[IO_PAGES];  /* (space ^ vpage) | 1 of pages found to be I/O (on_mem) */
    unsigned io_skips;
    struct page_memo memo[MEMO_PAGES];
    uint32_t generation;  /* moved on when the guest invalidates translations; starts at 1 */
    uint32_t memo_hits;   /* every RECHECK-th hit is asked of QEMU again */
};

static struct vcpu *vcpus;
static unsigned vcpu_count;

static void on_vcpu_init(qemu_plugin_id_t id, unsigned index)
{
    (void)id;
    if (index >= vcpu_count)
        return;
    struct vcpu *v = &vcpus[index];
    GArray *regs = qemu_plugin_get_registers();
    for (guint i = 0; i < regs->len; i++) {
        qemu_plugin_reg_descriptor *r = &g_array_index(regs, qemu_plugin_reg_descriptor, i);
        for (unsigned g = 0; g < 16; g++)
            if (strcmp(r->name, gpr_names[g]) == 0)
                v->gpr[g] = r->handle;
        if (strcmp(r->name, "fs_base") == 0)
            v->fs_base = r->handle;
        if (strcmp(r->name, "gs_base") == 0)
            v->gs_base = r->handle;
    }
    g_array_free(regs, TRUE);
    v->buf = g_byte_array_new();
}

static bool read_reg(struct vcpu *v, struct qemu_plugin_register *handle, uint64_t *value)
{
    if (!handle || !v->buf)
        return false;
    g_byte_array_set_size(v->buf, 0);
    int n = qemu_plugin_read_register(handle, v->buf);
    if (n <= 0)
        return false;
    *value = 0;
    for (int i = 0; i < n && i < 8; i++)  /* target byte order: little-endian */
        *value |= (uint64_t)v->buf->data[i] << (8 * i);
    return true;
}

/* ---- which pages are the FAM's: each vCPU's memory of QEMU's answers -------------------------
 *
 * Where an access landed is QEMU's to say (qemu_plugin_get_hwaddr, a lookup in its TLB), and
 * asking it on every load and store was half of a checked node's time: perf on a booting node
 * put 20% in QEMU's tlb_plugin_lookup and 28% in this plugin and its calls into QEMU, 17% in
 * the guest's own translated code. So each vCPU remembers, per (address space, virtual page),
 * what QEMU said last: the FAM page behind it, or not the FAM. That is what the CPU's own TLB
 * does, and it forgets the way a TLB must: an x86 kernel that changes a mapping in use
 * invalidates it before relying on the change (INVLPG, INVPCID, a MOV to CR3 without PCID's
 * no-flush bit, or a MOV to CR0 or CR4), since a real CPU would go on using the old one. On any
 * of those, the vCPU forgets every page (its generation moves on); a MOV to CR3 with the
 * no-flush bit keeps them, as the CPU keeps that address space's entries. A page whose
 * entry was not present needs no invalidation to become present, and has no memo to forget:
 * only an access that succeeded makes one. QEMU's TCG offers no INVLPGB, the one instruction
 * that would invalidate other CPUs' entries; each vCPU runs its own INVLPG when the kernel
 * shoots down a mapping. I/O pages stay in the separate io_pages memory below, whose rule is
 * about QEMU's own bug, not the guest.
 *
 * Checked as it runs: one hit in RECHECK is asked of QEMU again, counted as pages_rechecked,
 * and an answer that differs from the memo as pages_stale (the fresh answer is used, and kept).
 * A stale memo would be an access checked at the wrong line or not at all: the suite's checked
 * nodes must end with pages_stale at 0 (tests/test_coherence.py). */

#define RECHECK 4096
#define IO_PAGE (UINT64_MAX - 1)

static uint64_t space_of(unsigned vcpu, uint64_t vaddr);
static bool io_page_skipped(unsigned vcpu, uint64_t space, uint64_t vaddr);
static void io_page_seen(unsigned vcpu, uint64_t space, uint64_t vaddr);

static struct page_memo *memo_slot(unsigned vcpu, uint64_t space, uint64_t vaddr)
{
    uint64_t vpage = vaddr >> PAGE_SHIFT;
    return &vcpus[vcpu].memo[(vpage ^ (space >> PAGE_SHIFT) * 0x9E3779B97F4A7C15ull) % MEMO_PAGES];
}

/* The memo of vaddr's page in that space, or NULL. Inlined into on_mem: perf showed the call
 * itself among the plugin's costs. */
static inline __attribute__((always_inline))
struct page_memo *memo_of(unsigned vcpu, uint64_t space, uint64_t vaddr)
{
    if (vcpu >= vcpu_count)
        return NULL;
    struct page_memo *m = memo_slot(vcpu, space, vaddr);
    return m->generation == vcpus[vcpu].generation && m->vpage == vaddr >> PAGE_SHIFT
           && m->space == space ? m : NULL;
}

static void remember(unsigned vcpu, uint64_t space, uint64_t vaddr, uint64_t fam_page)
{
    if (vcpu >= vcpu_count)
        return;
    struct page_memo *m = memo_slot(vcpu, space, vaddr), *had = memo_of(vcpu, space, vaddr);
    if (had) {  /* a recheck */
        coh_count_pages(&model, node, COH_PAGES_RECHECKED, 1);
        if (had->fam_page != fam_page)
            coh_count_pages(&model, node, COH_PAGES_STALE, 1);
    }
    *m = (struct page_memo){ space, vaddr >> PAGE_SHIFT, fam_page, vcpus[vcpu].generation };
}

static void forget_pages(unsigned vcpu)
{
    if (vcpu >= vcpu_count)
        return;
    struct vcpu *v = &vcpus[vcpu];
    if (++v->generation == 0) {  /* wrapped: an old memo could look current again */
        memset(v->memo, 0, sizeof v->memo);
        v->generation = 1;
    }
}

/* QEMU's answer for the page of this access: its FAM page, NOT_FAM, or IO_PAGE. */
static uint64_t asked(unsigned vcpu, uint64_t space, qemu_plugin_meminfo_t info, uint64_t vaddr)
{
    struct qemu_plugin_hwaddr *h = qemu_plugin_get_hwaddr(info, vaddr);
    if (!h)
        return IO_PAGE;  /* nothing to check it against: skipped, as I/O is */
    if (qemu_plugin_hwaddr_is_io(h)) {
        io_page_seen(vcpu, space, vaddr);
        return IO_PAGE;
    }
    uint64_t pa = qemu_plugin_hwaddr_phys_addr(h);
    uint64_t fam_page = pa < base || pa - base >= model.fam_size ? NOT_FAM : (pa - base) >> PAGE_SHIFT;
    remember(vcpu, space, vaddr, fam_page);
    return fam_page;
}

/* ---- memory accesses --------------------------------------------------------------------- */

/* A memory callback's userdata: the instruction's PC and whether it is a non-temporal store. */
#define UD_PC_MASK 0x0000FFFFFFFFFFFFull
#define UD_NT (1ull << 62)

static void *pack_userdata(uint64_t pc, bool nt)
{
    return (void *)(uintptr_t)((pc & UD_PC_MASK) | (nt ? UD_NT : 0));
}

static uint64_t userdata_pc(void *ud)
{
    uint64_t pc = (uintptr_t)ud & UD_PC_MASK;
    return pc & (1ull << 47) ? pc | ~UD_PC_MASK : pc;
}



static void on_mem(unsigned vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *ud)
{
    uint64_t space = space_of(vcpu, vaddr), fam_page;
    struct page_memo *memo = memo_of(vcpu, space, vaddr);
    if (__builtin_expect(memo && ++vcpus[vcpu].memo_hits % RECHECK != 0, 1))
        fam_page = memo->fam_page;
    else if (!memo && io_page_skipped(vcpu, space, vaddr))
        return;  /* (a remembered page is memory, not I/O: asking QEMU again is safe) */
    else if ((fam_page = asked(vcpu, space, info, vaddr)) == IO_PAGE)
        return;
    if (fam_page == NOT_FAM) {
        resolve(space, vaddr, NOT_FAM);  /* a flush waiting for this page was not the FAM's */
        return;
    }
    uint64_t off = fam_page << PAGE_SHIFT | (vaddr & ((1u << PAGE_SHIFT) - 1));
    uint64_t size = 1ull << qemu_plugin_mem_size_shift(info);
    learn(space, vaddr, fam_page);
    resolve(space, vaddr, fam_page);
    uint64_t pc = userdata_pc(ud);
    if (!qemu_plugin_mem_is_store(info))
        coh_load(&model, node, off, size, pc);
    else if ((uintptr_t)ud & UD_NT)
        coh_nt_store(&model, node, off, size, pc);
    else
        coh_store(&model, node, off, size, pc);
}

/* ---- flushes and fences -------------------------------------------------------------------- */

struct flush_insn {
    uint64_t pc;
    struct coh_insn op;
    enum coh_flush_kind kind;
};

/* The operand's virtual address, as the CPU computes it. */
static bool effective_address(unsigned vcpu, const struct flush_insn *f, uint64_t *va)
{
    if (vcpu >= vcpu_count)
        return false;
    struct vcpu *v = &vcpus[vcpu];
    const struct coh_insn *op = &f->op;
    uint64_t a = (uint64_t)op->disp, r;
    if (op->rip_relative)
        a += f->pc + op->length;
    if (op->base >= 0) {
        if (!read_reg(v, v->gpr[op->base], &r))
            return false;
        a += r;
    }
    if (op->index >= 0) {
        if (!read_reg(v, v->gpr[op->index], &r))
            return false;
        a += r * op->scale;
    }
    if (op->addr32)
        a &= 0xffffffffull;
    if (op->seg != COH_SEG_NONE) {
        if (!read_reg(v, op->seg == COH_SEG_FS ? v->fs_base : v->gs_base, &r))
            return false;
        a += r;
    }
    *va = a;
    return true;
}

static void on_flush(unsigned vcpu, void *ud)
{
    const struct flush_insn *f = ud;
    uint64_t va;
    if (!effective_address(vcpu, f, &va)) {
        coh_count(&model, node, COH_FLUSH_UNRESOLVED, 1);
        return;
    }
    uint64_t space = space_of(vcpu, va), page = look_up(space, va);
    if (page == UNKNOWN)
        wait_for_page(space, va, f->pc, f->kind);
    else
        coh_flush(&model, node, page << PAGE_SHIFT | (va & ((1u << PAGE_SHIFT) - 1)), f->kind, f->pc);
}

/* ---- address spaces ------------------------------------------------------------------------
 *
 * Which process's page tables a user address belongs to: the vCPU's CR3, kept up to date by
 * a callback on every MOV to CR3 (the guest kernel's context switch), which reads the new
 * value from the source register before the instruction runs. Kernel addresses (the upper
 * half) are the same in every space: space 0. The nodes boot with mitigations=off, so no page
 * table isolation switches CR3 on every system call; with it, this would still be right, only
 * slower. A vCPU's space before its first switch is 0, as the kernel's is. */

#define KERNEL_HALF 0xFFFF800000000000ull
#define CR3_ROOT 0x000FFFFFFFFFF000ull

static uint64_t space_of(unsigned vcpu, uint64_t vaddr)
{
    if (vaddr >= KERNEL_HALF || vcpu >= vcpu_count)
        return 0;
    return __atomic_load_n(&vcpus[vcpu].space, __ATOMIC_RELAXED);
}

/* ---- memory-mapped I/O ---------------------------------------------------------------------
 *
 * QEMU 10.0.2's qemu_plugin_get_hwaddr can abort QEMU on memory-mapped I/O: tlb_plugin_lookup
 * asserts in iotlb_to_section ("section_index < d->map.sections_nb"), seen about once in 40
 * boots of a 2-vCPU guest, on the local APIC's EOI register. So each vCPU remembers the pages
 * it found to be I/O, and asks QEMU about one again only once in IO_RECHECK accesses: the
 * lookups, and the risk, drop to a few. A page that turns from I/O into the FAM goes unseen
 * until then; guests do not do that. */

#define IO_RECHECK 256

static uint64_t *io_slot(unsigned vcpu, uint64_t space, uint64_t vaddr, uint64_t *key)
{
    *key = (space ^ (vaddr >> PAGE_SHIFT)) | 1;
    return &vcpus[vcpu].io_pages[(vaddr >> PAGE_SHIFT) % IO_PAGES];
}

static bool io_page_skipped(unsigned vcpu, uint64_t space, uint64_t vaddr)
{
    uint64_t key;
    if (vcpu >= vcpu_count || *io_slot(vcpu, space, vaddr, &key) != key)
        return false;
    return ++vcpus[vcpu].io_skips % IO_RECHECK != 0;
}

static void io_page_seen(unsigned vcpu, uint64_t space, uint64_t vaddr)
{
    uint64_t key;
    if (vcpu < vcpu_count)
        *io_slot(vcpu, space, vaddr, &key) = key;
}

#define CR3_NOFLUSH (1ull << 63)

static void on_mov_cr3(unsigned vcpu, void *ud)
{
    uint64_t value;
    if (vcpu >= vcpu_count)
        return;
    if (!read_reg(&vcpus[vcpu], vcpus[vcpu].gpr[(uintptr_t)ud], &value)) {
        forget_pages(vcpu);  /* which space comes next is unknown: nothing is remembered */
        return;
    }
    __atomic_store_n(&vcpus[vcpu].space, value & CR3_ROOT, __ATOMIC_RELAXED);
    if (!(value & CR3_NOFLUSH))
        forget_pages(vcpu);
}

static void on_tlb_flush(unsigned vcpu, void *ud)
{
    (void)ud;
    forget_pages(vcpu);
}

static void on_fence(unsigned vcpu, void *ud)
{
    (void)vcpu, (void)ud;
    coh_count(&model, node, COH_FENCES, 1);
}

/* A flush's decoded operand lives as long as the translations that use it, which the API does
 * not tell; one per PC and operand is kept, so retranslating the same code allocates nothing. */
static GHashTable *flush_insns;
static pthread_mutex_t flush_insns_lock = PTHREAD_MUTEX_INITIALIZER;

static bool same_op(const struct coh_insn *a, const struct coh_insn *b)
{
    return a->kind == b->kind && a->base == b->base && a->index == b->index
        && a->scale == b->scale && a->disp == b->disp && a->rip_relative == b->rip_relative
        && a->addr32 == b->addr32 && a->seg == b->seg && a->length == b->length;
}

static struct flush_insn *flush_insn_for(uint64_t pc, const struct coh_insn *op)
{
    pthread_mutex_lock(&flush_insns_lock);
    struct flush_insn *f = g_hash_table_lookup(flush_insns, &pc);
    if (!f || !same_op(&f->op, op)) {  /* another process's code at that address: a new one */
        f = g_new0(struct flush_insn, 1);
        f->pc = pc;
        f->op = *op;
        f->kind = op->kind == COH_INSN_CLWB ? COH_CLWB
                : op->kind == COH_INSN_CLFLUSHOPT ? COH_CLFLUSHOPT : COH_CLFLUSH;
        g_hash_table_insert(flush_insns, &f->pc, f);
    }
    pthread_mutex_unlock(&flush_insns_lock);
    return f;
}

/* ---- translation ----------------------------------------------------------------------------- */

static void instrument(struct qemu_plugin_insn *insn)
{
    uint8_t bytes[16];
    size_t len = qemu_plugin_insn_data(insn, bytes, sizeof bytes);
    uint64_t pc = qemu_plugin_insn_vaddr(insn);
    struct coh_insn op;
    coh_decode(bytes, len, &op);
    switch (op.kind) {
    case COH_INSN_CLFLUSH:
    case COH_INSN_CLFLUSHOPT:
    case COH_INSN_CLWB:
        qemu_plugin_register_vcpu_insn_exec_cb(insn, on_flush, QEMU_PLUGIN_CB_R_REGS,
                                               flush_insn_for(pc, &op));
        break;
    case COH_INSN_SFENCE:
    case COH_INSN_LFENCE:
    case COH_INSN_MFENCE:
        qemu_plugin_register_vcpu_insn_exec_cb(insn, on_fence, QEMU_PLUGIN_CB_NO_REGS, NULL);
        break;
    case COH_INSN_MOV_CR3:
        qemu_plugin_register_vcpu_insn_exec_cb(insn, on_mov_cr3, QEMU_PLUGIN_CB_R_REGS,
                                               (void *)(uintptr_t)op.base);
        return;  /* it touches no memory */
    case COH_INSN_TLB_FLUSH:
        qemu_plugin_register_vcpu_insn_exec_cb(insn, on_tlb_flush, QEMU_PLUGIN_CB_NO_REGS, NULL);
        break;  /* INVPCID reads its descriptor from memory */
    default:
        break;
    }
    /* QEMU calls it only for the accesses an instruction makes: none costs nothing */
    qemu_plugin_register_vcpu_mem_cb(insn, on_mem, QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_MEM_RW,
                                     pack_userdata(pc, op.kind == COH_INSN_NT_STORE));
}

static void on_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++)
        instrument(qemu_plugin_tb_get_insn(tb, i));
}

/* Flushes still waiting when QEMU ends never found their page. */
static void on_qemu_exit(qemu_plugin_id_t id, void *ud)
{
    (void)id, (void)ud;
    pthread_mutex_lock(&pending.lock);
    coh_count(&model, node, COH_FLUSH_UNRESOLVED, pending.count);
    pending.count = 0;
    recompute_pages();
    pthread_mutex_unlock(&pending.lock);
}

/* ---- start ----------------------------------------------------------------------------------- */

/* Decimal, or hex with 0x: never octal, no sign, nothing after it. */
static bool parse_number(const char *s, uint64_t *value)
{
    bool hex = s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
    const char *digits = hex ? s + 2 : s;
    if (!(hex ? isxdigit((unsigned char)*digits) : isdigit((unsigned char)*digits)))
        return false;  /* strtoull would take a sign or spaces */
    char *end;
    errno = 0;
    unsigned long long v = strtoull(digits, &end, hex ? 16 : 10);
    if (errno || end == digits || *end)
        return false;
    *value = v;
    return true;
}

struct args {
    const char *model;
    const char *node;
    const char *base;
};

static int parse_args(int argc, char **argv, struct args *a, char *err, size_t err_len)
{
    for (int i = 0; i < argc; i++) {
        const char *eq = strchr(argv[i], '=');
        size_t klen = eq ? (size_t)(eq - argv[i]) : strlen(argv[i]);
        const char **slot = !eq ? NULL
            : klen == 5 && !strncmp(argv[i], "model", 5) ? &a->model
            : klen == 4 && !strncmp(argv[i], "node", 4) ? &a->node
            : klen == 4 && !strncmp(argv[i], "base", 4) ? &a->base : NULL;
        if (!slot) {
            snprintf(err, err_len, "unknown argument '%s' (it takes model=, node= and base=)", argv[i]);
            return -1;
        }
        *slot = eq + 1;
    }
    const char *missing = !a->model ? "model" : !a->node ? "node" : !a->base ? "base" : NULL;
    if (missing) {
        snprintf(err, err_len, "no %s= argument (it takes model=, node= and base=)", missing);
        return -1;
    }
    return 0;
}

static int check_numbers(const struct args *a, char *err, size_t err_len)
{
    uint64_t n;
    if (!parse_number(a->node, &n) || n >= model.nodes_max) {
        snprintf(err, err_len, "node=%s is not a node of the model (0..%u)", a->node,
                 model.nodes_max - 1);
        return -1;
    }
    node = (unsigned)n;
    if (!parse_number(a->base, &base) || base % (1u << PAGE_SHIFT)
        || base + model.fam_size < base) {
        snprintf(err, err_len, "base=%s is not a 4 KiB-aligned guest-physical address", a->base);
        return -1;
    }
    if (model.fam_size >> PAGE_SHIFT >= NOT_FAM) {
        snprintf(err, err_len, "the model's FAM of %" PRIu64 " bytes is over the 4 TiB it can check",
                 model.fam_size);
        return -1;
    }
    return 0;
}

static int set_up(const qemu_info_t *info, int argc, char **argv, char *err, size_t err_len)
{
    struct args a = { 0 };
    if (!info->system_emulation || strcmp(info->target_name, "x86_64") != 0) {
        snprintf(err, err_len, "checks x86_64 system emulation only, not %s%s", info->target_name,
                 info->system_emulation ? "" : " user mode");
        return -1;
    }
    if (parse_args(argc, argv, &a, err, err_len) != 0)
        return -1;
    if (coh_open(&model, a.model, err, err_len) != 0)
        return -1;
    model_path = a.model;
    if (check_numbers(&a, err, err_len) != 0) {
        coh_close(&model);
        return -1;
    }
    vcpu_count = info->system.max_vcpus > 0 ? (unsigned)info->system.max_vcpus : 1;
    vcpus = g_new0(struct vcpu, vcpu_count);
    for (unsigned i = 0; i < vcpu_count; i++)
        vcpus[i].generation = 1;  /* a zeroed memo is no memo */
    flush_insns = g_hash_table_new(g_int64_hash, g_int64_equal);
    return 0;
}

static void announce(void)
{
    uint64_t mib = model.fam_size >> 20;
    char size[32];
    if (model.fam_size % (1u << 20))
        snprintf(size, sizeof size, "%.3f", model.fam_size / 1048576.0);
    else
        snprintf(size, sizeof size, "%" PRIu64, mib);
    fprintf(stderr, "dali-coherence: node %u checking 0x%" PRIx64 "..0x%" PRIx64
            " (%s MiB) in %s mode, model %s\n", node, base, base + model.fam_size, size,
            model.mode == COH_STRICT ? "strict" : "cached", model_path);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    char err[512];
    if (set_up(info, argc, argv, err, sizeof err) != 0) {
        fprintf(stderr, "dali-coherence: %s\n", err);
        return -1;
    }
    announce();
    coh_boot(&model, node);
    qemu_plugin_register_vcpu_init_cb(id, on_vcpu_init);
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
    qemu_plugin_register_atexit_cb(id, on_qemu_exit, NULL);
    return 0;
}
