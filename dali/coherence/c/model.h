/*
 * The shared coherence model of the FAM: what each node's cache may hold of each 64-byte line,
 * and the findings table. Every node's QEMU (plugin.c) maps the same model file and updates it
 * with atomics, so the nodes see one model; model_test.c drives the same code on the host.
 *
 * Why a model at all: real fabric-attached (CXL) shared memory is not cache-coherent between
 * nodes. A node must write its dirty lines back (CLWB, CLFLUSHOPT, CLFLUSH, or non-temporal
 * stores) before another node can see them, and must invalidate (CLFLUSH, CLFLUSHOPT) its own
 * copy before reading what another wrote. Under QEMU every node shares the host's coherent
 * caches, so a missing flush never shows in the data; this model makes it show as a finding.
 *
 * THE FILE LAYOUT (a contract with the Python side, dali/coherence; little-endian, offsets in
 * bytes). dali creates the file sparse (ftruncate) with the header written; all else is zero.
 *
 * Header, 4096 bytes at offset 0:
 *     0  magic, 8 bytes, ASCII "DALICOH1"
 *     8  u32 version = 1
 *    12  u32 nodes_max = 8
 *    16  u64 fam_size (bytes, a multiple of 64)
 *    24  u64 line_size = 64
 *    32  u64 lines = fam_size / 64
 *    40  u64 lines_offset = 4096
 *    48  u64 findings_offset = round_up(lines_offset + lines * 24, 4096)
 *    56  u64 findings_slots (a power of two; dali writes 65536)
 *    64  u32 mode: 1 = strict, 2 = cached
 *    68  u32 reserved (0)
 *    72..255 zero
 *   256  per node i in 0..7, 64 bytes at 256 + 64*i, eight u64 counters in this order:
 *        boots, loads, stores, nt_stores, flushes, fences, findings, flush_unresolved
 *   768  per node i in 0..7, 64 bytes at 768 + 64*i, the plugin's counts of itself (plugin.c,
 *        "Which pages are the FAM's"): u64 pages_rechecked, u64 pages_stale, six u64 zero.
 *        (A model an older plugin used has zeros there: the layout's version is still 1.)
 * The file's size is findings_offset + findings_slots * 64.
 *
 * Lines: at lines_offset, `lines` entries of 24 bytes, three u64 words each:
 *   word 0, state: node i (0..7) owns the nibble at bits 4i..4i+3. Bits 0-1 of the nibble are
 *        the copy state: 0 NONE (nothing known since the node booted: in strict mode it may
 *        hold a prefetched copy), 1 INVALID (flushed or invalidated by the node), 2 CLEAN,
 *        3 DIRTY; bit 2 STALE (another node wrote a newer version back after this copy was
 *        taken); bit 3 CLWB_KEPT (the node's last flush of the line was a CLWB, which may keep
 *        the line cached). Bits 32-63 are zero. Updated only by compare-and-swap.
 *   word 1, last_store: the last store to the line by any node, packed as
 *        (pc & 0x0000FFFFFFFFFFFF) | (node << 56) | (1 << 63); 0 = none.
 *        Unpacked: node = (w >> 56) & 0x7f, pc = bits 0..47 sign-extended.
 *   word 2, last_writeback: the same packing, for the last write-back (the flush instruction
 *        or the non-temporal store) and its node.
 *
 * Findings: at findings_offset, findings_slots slots of 64 bytes:
 *     0  u64 key (0 = empty): a hash of (kind, writer_node, reader_node, writer_pc, reader_pc),
 *        never 0. A slot is claimed by CAS on its key; linear probing.
 *     8  u32 kind: 1 unflushed_read, 2 stale_read, 3 lost_write, 4 clwb_kept_stale
 *    12  u8 writer_node   13 u8 reader_node (the node whose access found it)   14 u16 reserved
 *    16  u64 writer_pc (sign-extended)
 *    24  u64 reader_pc
 *    32  u64 count: added to last, so a slot whose count is 0 is not (yet) a finding
 *    40  u64 first_offset (FAM offset of the first occurrence)
 *    48  u64 last_offset
 *    56  u64 reserved
 * A full table drops the slot, never the occurrence: the reader's `findings` counter counts
 * every occurrence.
 *
 * Where a key's probing starts is this file's business, not the contract's: each reader node
 * probes only its own 1/nodes_max share of the slots, so a node's boot, which empties its
 * slots, never breaks another node's probe chain (an emptied slot in the middle of a chain
 * would let the same finding claim a second slot).
 */

#ifndef DALI_COHERENCE_MODEL_H
#define DALI_COHERENCE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#define COH_MAGIC "DALICOH1"
#define COH_VERSION 1
#define COH_NODES_MAX 8
#define COH_LINE_SIZE 64
#define COH_HEADER_SIZE 4096
#define COH_LINES_OFFSET 4096

enum coh_mode { COH_STRICT = 1, COH_CACHED = 2 };

/* A node's copy of a line: the low two bits of its nibble, then two flags. */
enum { COH_NONE = 0, COH_INVALID = 1, COH_CLEAN = 2, COH_DIRTY = 3 };
#define COH_COPY_MASK 3u
#define COH_STALE 4u
#define COH_CLWB_KEPT 8u

enum coh_kind {
    COH_UNFLUSHED_READ = 1,
    COH_STALE_READ = 2,
    COH_LOST_WRITE = 3,
    COH_CLWB_KEPT_STALE = 4,
};

/* CLFLUSH and CLFLUSHOPT behave alike here: their difference is ordering, not the line. */
enum coh_flush_kind { COH_CLFLUSH, COH_CLFLUSHOPT, COH_CLWB };

enum coh_counter {
    COH_BOOTS, COH_LOADS, COH_STORES, COH_NT_STORES,
    COH_FLUSHES, COH_FENCES, COH_FINDINGS, COH_FLUSH_UNRESOLVED,
    COH_COUNTERS
};

struct coh_node_counters {
    uint64_t c[COH_COUNTERS];
};

enum coh_page_counter { COH_PAGES_RECHECKED, COH_PAGES_STALE };

struct coh_node_pages {
    uint64_t c[2];
    uint64_t zero[6];
};

struct coh_header {
    char magic[8];
    uint32_t version;
    uint32_t nodes_max;
    uint64_t fam_size;
    uint64_t line_size;
    uint64_t lines;
    uint64_t lines_offset;
    uint64_t findings_offset;
    uint64_t findings_slots;
    uint32_t mode;
    uint32_t reserved;
    uint8_t zero[256 - 72];
    struct coh_node_counters node[COH_NODES_MAX];
    struct coh_node_pages pages[COH_NODES_MAX];
    uint8_t rest[COH_HEADER_SIZE - 256 - 2 * 64 * COH_NODES_MAX];
};

struct coh_line {
    uint64_t state;
    uint64_t last_store;
    uint64_t last_writeback;
};

struct coh_finding {
    uint64_t key;
    uint32_t kind;
    uint8_t writer_node;
    uint8_t reader_node;
    uint16_t reserved;
    uint64_t writer_pc;
    uint64_t reader_pc;
    uint64_t count;
    uint64_t first_offset;
    uint64_t last_offset;
    uint64_t reserved2;
};

/* The layout above, checked by the compiler: a field that moves breaks the build. */
_Static_assert(sizeof(struct coh_header) == COH_HEADER_SIZE, "header is 4096 bytes");
_Static_assert(offsetof(struct coh_header, version) == 8, "version at 8");
_Static_assert(offsetof(struct coh_header, nodes_max) == 12, "nodes_max at 12");
_Static_assert(offsetof(struct coh_header, fam_size) == 16, "fam_size at 16");
_Static_assert(offsetof(struct coh_header, line_size) == 24, "line_size at 24");
_Static_assert(offsetof(struct coh_header, lines) == 32, "lines at 32");
_Static_assert(offsetof(struct coh_header, lines_offset) == 40, "lines_offset at 40");
_Static_assert(offsetof(struct coh_header, findings_offset) == 48, "findings_offset at 48");
_Static_assert(offsetof(struct coh_header, findings_slots) == 56, "findings_slots at 56");
_Static_assert(offsetof(struct coh_header, mode) == 64, "mode at 64");
_Static_assert(offsetof(struct coh_header, reserved) == 68, "reserved at 68");
_Static_assert(offsetof(struct coh_header, node) == 256, "node counters at 256");
_Static_assert(offsetof(struct coh_header, pages) == 768, "the plugin's counters at 768");
_Static_assert(sizeof(struct coh_node_counters) == 64, "64 bytes of counters a node");
_Static_assert(sizeof(struct coh_node_pages) == 64, "64 bytes of the plugin's counts a node");
_Static_assert(sizeof(struct coh_line) == 24, "a line entry is 24 bytes");
_Static_assert(sizeof(struct coh_finding) == 64, "a finding slot is 64 bytes");
_Static_assert(offsetof(struct coh_finding, kind) == 8, "kind at 8");
_Static_assert(offsetof(struct coh_finding, writer_node) == 12, "writer_node at 12");
_Static_assert(offsetof(struct coh_finding, reader_node) == 13, "reader_node at 13");
_Static_assert(offsetof(struct coh_finding, writer_pc) == 16, "writer_pc at 16");
_Static_assert(offsetof(struct coh_finding, reader_pc) == 24, "reader_pc at 24");
_Static_assert(offsetof(struct coh_finding, count) == 32, "count at 32");
_Static_assert(offsetof(struct coh_finding, first_offset) == 40, "first_offset at 40");
_Static_assert(offsetof(struct coh_finding, last_offset) == 48, "last_offset at 48");

/* An open model: where the file's parts are mapped, and what its header said. */
struct coh_model {
    int fd;                          /* -1 for a mapping without a file (no sparse scan) */
    void *map;
    size_t map_size;
    struct coh_header *header;
    struct coh_line *lines;
    struct coh_finding *findings;
    uint64_t fam_size;
    uint64_t line_count;
    uint64_t slots;
    unsigned nodes_max;
    enum coh_mode mode;
};

/* Fill a zeroed header for a FAM of fam_size bytes; returns the file size it needs. */
uint64_t coh_format(struct coh_header *h, uint64_t fam_size, uint64_t slots, enum coh_mode mode);

/* Open and map a model file (O_RDWR, MAP_SHARED) and check its header. On failure returns
 * -1 with a one-line reason in err, the model untouched. */
int coh_open(struct coh_model *m, const char *path, char *err, size_t err_len);

/* The same checks on a mapping made elsewhere (fd may be -1). */
int coh_model_from_mapping(struct coh_model *m, void *map, size_t size, int fd,
                           char *err, size_t err_len);

void coh_close(struct coh_model *m);

/* The accesses of node n, to the FAM bytes [off, off + size): every line they touch. The pc is
 * the instruction's, as the findings will show it. Each call counts one access. */
void coh_load(struct coh_model *m, unsigned n, uint64_t off, uint64_t size, uint64_t pc);
void coh_store(struct coh_model *m, unsigned n, uint64_t off, uint64_t size, uint64_t pc);
void coh_nt_store(struct coh_model *m, unsigned n, uint64_t off, uint64_t size, uint64_t pc);

/* A flush by node n of the line holding FAM offset off. */
void coh_flush(struct coh_model *m, unsigned n, uint64_t off, enum coh_flush_kind kind,
               uint64_t pc);

/* Add to one of node n's counters (fences and unresolved flushes are counted by the plugin). */
void coh_count(struct coh_model *m, unsigned n, enum coh_counter counter, uint64_t by);

/* Add to one of node n's counts of its plugin's page memory. */
void coh_count_pages(struct coh_model *m, unsigned n, enum coh_page_counter counter, uint64_t by);

/* Node n starts: counts the boot, forgets n's copies and n's findings. */
void coh_boot(struct coh_model *m, unsigned n);

/* One finding occurrence, found by reader's access at FAM offset off. */
void coh_report(struct coh_model *m, enum coh_kind kind, unsigned writer, unsigned reader,
                uint64_t writer_pc, uint64_t reader_pc, uint64_t off);

/* The packing of last_store and last_writeback. */
uint64_t coh_pack_pc(uint64_t pc, unsigned node);
uint64_t coh_packed_pc(uint64_t word);
unsigned coh_packed_node(uint64_t word);

/* Node n's nibble of a state word. */
unsigned coh_nibble(uint64_t state, unsigned n);

const char *coh_kind_name(enum coh_kind kind);

#endif
