/*
 * The coherence model's state transitions and findings (the layout: model.h).
 *
 * Several vCPUs of several QEMU processes update the same line at once, so a line's state word
 * changes only by compare-and-swap: each access computes the new word from the old one with a
 * pure function (the "step" functions below), and reports its findings from the old word it
 * replaced, once the swap succeeded, so a retried swap never reports twice. The last_store and
 * last_writeback words only name a culprit's PC; plain atomic stores suffice for them.
 */

#define _GNU_SOURCE
#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define LINE_ENTRY_SIZE sizeof(struct coh_line)
#define SLOT_SIZE sizeof(struct coh_finding)
#define PC_MASK 0x0000FFFFFFFFFFFFull
#define PC_VALID (1ull << 63)

/* ---- the file -------------------------------------------------------------------------- */

static uint64_t round_up(uint64_t v, uint64_t to)
{
    return (v + to - 1) / to * to;
}

uint64_t coh_format(struct coh_header *h, uint64_t fam_size, uint64_t slots, enum coh_mode mode)
{
    memcpy(h->magic, COH_MAGIC, 8);
    h->version = COH_VERSION;
    h->nodes_max = COH_NODES_MAX;
    h->fam_size = fam_size;
    h->line_size = COH_LINE_SIZE;
    h->lines = fam_size / COH_LINE_SIZE;
    h->lines_offset = COH_LINES_OFFSET;
    h->findings_offset = round_up(h->lines_offset + h->lines * LINE_ENTRY_SIZE, 4096);
    h->findings_slots = slots;
    h->mode = mode;
    return h->findings_offset + slots * SLOT_SIZE;
}

/* The header's promises, each one the mapping relies on; the first broken one is the error. */
static const char *header_problem(const struct coh_header *h, size_t size)
{
    if (size < COH_HEADER_SIZE)
        return "is shorter than its 4096-byte header";
    if (memcmp(h->magic, COH_MAGIC, 8) != 0)
        return "is not a coherence model (no DALICOH1 magic)";
    if (h->version != COH_VERSION)
        return "has a version other than 1";
    if (h->nodes_max == 0 || h->nodes_max > COH_NODES_MAX)
        return "has nodes_max outside 1..8";
    if (h->line_size != COH_LINE_SIZE)
        return "has a line size other than 64";
    if (h->fam_size == 0 || h->fam_size % COH_LINE_SIZE || h->lines != h->fam_size / COH_LINE_SIZE)
        return "has a FAM size that is not its lines times 64";
    if (h->lines_offset < COH_HEADER_SIZE || h->lines_offset % 8
        || h->lines > (UINT64_MAX - h->lines_offset) / LINE_ENTRY_SIZE)
        return "has its lines inside the header or unaligned";
    if (h->findings_offset < h->lines_offset + h->lines * LINE_ENTRY_SIZE || h->findings_offset % 8)
        return "has its findings over its lines or unaligned";
    if (h->findings_slots > (UINT64_MAX - h->findings_offset) / SLOT_SIZE
        || h->findings_offset + h->findings_slots * SLOT_SIZE > size)
        return "is shorter than its findings table";
    if (h->mode != COH_STRICT && h->mode != COH_CACHED)
        return "has a mode other than 1 (strict) or 2 (cached)";
    return NULL;
}

int coh_model_from_mapping(struct coh_model *m, void *map, size_t size, int fd,
                           char *err, size_t err_len)
{
    struct coh_header *h = map;
    const char *problem = header_problem(h, size);
    if (problem) {
        snprintf(err, err_len, "%s", problem);
        return -1;
    }
    *m = (struct coh_model){
        .fd = fd, .map = map, .map_size = size, .header = h,
        .lines = (struct coh_line *)((char *)map + h->lines_offset),
        .findings = (struct coh_finding *)((char *)map + h->findings_offset),
        .fam_size = h->fam_size, .line_count = h->lines, .slots = h->findings_slots,
        .nodes_max = h->nodes_max, .mode = (enum coh_mode)h->mode,
    };
    return 0;
}

int coh_open(struct coh_model *m, const char *path, char *err, size_t err_len)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, err_len, "cannot open the model %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < COH_HEADER_SIZE) {
        snprintf(err, err_len, "the model %s is shorter than its 4096-byte header", path);
        close(fd);
        return -1;
    }
    void *map = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        snprintf(err, err_len, "cannot map the model %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    char why[160];
    if (coh_model_from_mapping(m, map, st.st_size, fd, why, sizeof why) != 0) {
        snprintf(err, err_len, "the model %s %s", path, why);
        munmap(map, st.st_size);
        close(fd);
        return -1;
    }
    return 0;
}

void coh_close(struct coh_model *m)
{
    if (m->fd >= 0) {
        munmap(m->map, m->map_size);
        close(m->fd);
    }
    m->map = NULL;
}

/* ---- packed PCs and nibbles ------------------------------------------------------------- */

uint64_t coh_pack_pc(uint64_t pc, unsigned node)
{
    return (pc & PC_MASK) | ((uint64_t)node << 56) | PC_VALID;
}

uint64_t coh_packed_pc(uint64_t word)
{
    uint64_t pc = word & PC_MASK;
    return pc & (1ull << 47) ? pc | ~PC_MASK : pc;
}

unsigned coh_packed_node(uint64_t word)
{
    return (word >> 56) & 0x7f;
}

unsigned coh_nibble(uint64_t state, unsigned n)
{
    return (state >> (4 * n)) & 0xf;
}

static unsigned copy_of(uint64_t state, unsigned n)
{
    return coh_nibble(state, n) & COH_COPY_MASK;
}

static uint64_t with_nibble(uint64_t state, unsigned n, unsigned nibble)
{
    return (state & ~(0xfull << (4 * n))) | ((uint64_t)nibble << (4 * n));
}

/* The nodes other than n whose copy is DIRTY, as a bit mask. */
static unsigned dirty_others(const struct coh_model *m, uint64_t state, unsigned n)
{
    unsigned mask = 0;
    for (unsigned o = 0; o < m->nodes_max; o++)
        if (o != n && copy_of(state, o) == COH_DIRTY)
            mask |= 1u << o;
    return mask;
}

/* The PC a packed word names for node `who`, or 0 if it names another node: the line keeps
 * only the last store, so an earlier store's PC is lost once someone else stored. */
static uint64_t pc_if_node(uint64_t packed, unsigned who)
{
    return packed && coh_packed_node(packed) == who ? coh_packed_pc(packed) : 0;
}

/* ---- the steps: old state word -> new state word, for node n ----------------------------- */

/* n writes its dirty copy back: every other node's copy that predates it is now stale. In
 * strict mode a node that took no copy since its boot may still hold a prefetched one. */
static uint64_t step_writeback(const struct coh_model *m, uint64_t s, unsigned n)
{
    for (unsigned o = 0; o < m->nodes_max; o++) {
        unsigned c = copy_of(s, o);
        if (o != n && (c == COH_CLEAN || (m->mode == COH_STRICT && c == COH_NONE)))
            s = with_nibble(s, o, coh_nibble(s, o) | COH_STALE);
    }
    return s;
}

/* A stale copy keeps being read (and reported) until n invalidates it; a missing copy is
 * fetched from memory. */
static uint64_t step_load(const struct coh_model *m, uint64_t s, unsigned n)
{
    (void)m;
    unsigned nib = coh_nibble(s, n);
    if (nib & COH_STALE || (nib & COH_COPY_MASK) >= COH_CLEAN)
        return s;
    return with_nibble(s, n, (nib & COH_CLWB_KEPT) | COH_CLEAN);
}

static uint64_t step_store(const struct coh_model *m, uint64_t s, unsigned n)
{
    (void)m;
    return with_nibble(s, n, (coh_nibble(s, n) & COH_CLWB_KEPT) | COH_DIRTY);
}

/* A non-temporal store goes to memory and evicts n's copy. */
static uint64_t step_nt_store(const struct coh_model *m, uint64_t s, unsigned n)
{
    return with_nibble(step_writeback(m, s, n), n, COH_INVALID);
}

static uint64_t step_invalidate(const struct coh_model *m, uint64_t s, unsigned n)
{
    if (copy_of(s, n) == COH_DIRTY)
        s = step_writeback(m, s, n);
    return with_nibble(s, n, COH_INVALID);
}

/* CLWB writes back but may keep the line: a stale copy stays stale, and is marked as kept. */
static uint64_t step_clwb(const struct coh_model *m, uint64_t s, unsigned n)
{
    if (copy_of(s, n) == COH_DIRTY)
        return with_nibble(step_writeback(m, s, n), n, COH_CLEAN | COH_CLWB_KEPT);
    return with_nibble(s, n, coh_nibble(s, n) | COH_CLWB_KEPT);
}

typedef uint64_t (*step_fn)(const struct coh_model *, uint64_t, unsigned);

/* Apply a step to a line's state word; returns the old word the step replaced. */
static uint64_t apply(const struct coh_model *m, struct coh_line *line, unsigned n, step_fn step)
{
    uint64_t old = __atomic_load_n(&line->state, __ATOMIC_ACQUIRE);
    for (;;) {
        uint64_t new = step(m, old, n);
        if (new == old)
            return old;  /* a read of a line already held: no write, no cache-line bouncing */
        if (__atomic_compare_exchange_n(&line->state, &old, new, false,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return old;
    }
}

/* ---- the accesses ------------------------------------------------------------------------ */

static struct coh_line *line_at(struct coh_model *m, uint64_t off)
{
    return &m->lines[off / COH_LINE_SIZE];
}

/* A store by n while other nodes hold the line dirty: one of the two write-backs will put its
 * bytes over the other's. prev_store is the line's last_store before n's store replaced it. */
static void report_dirty_others(struct coh_model *m, uint64_t old, unsigned n, enum coh_kind kind,
                                uint64_t prev_store, uint64_t pc, uint64_t off)
{
    unsigned mask = dirty_others(m, old, n);
    for (unsigned o = 0; mask; o++, mask >>= 1)
        if (mask & 1)
            coh_report(m, kind, o, n, pc_if_node(prev_store, o), pc, off);
}

/* A finding against the line's last write-back: n's copy is older than it. */
static void report_against_writeback(struct coh_model *m, struct coh_line *line, enum coh_kind kind,
                                     unsigned n, uint64_t pc, uint64_t off)
{
    uint64_t wb = __atomic_load_n(&line->last_writeback, __ATOMIC_ACQUIRE);
    coh_report(m, kind, coh_packed_node(wb), n, coh_packed_pc(wb), pc, off);
}

static void load_line(struct coh_model *m, unsigned n, uint64_t off, uint64_t pc)
{
    struct coh_line *line = line_at(m, off);
    uint64_t old = apply(m, line, n, step_load);
    unsigned nib = coh_nibble(old, n);
    if (nib & COH_STALE) {
        enum coh_kind kind = nib & COH_CLWB_KEPT ? COH_CLWB_KEPT_STALE : COH_STALE_READ;
        report_against_writeback(m, line, kind, n, pc, off);
    } else if ((nib & COH_COPY_MASK) <= COH_INVALID) {
        uint64_t last = __atomic_load_n(&line->last_store, __ATOMIC_ACQUIRE);
        report_dirty_others(m, old, n, COH_UNFLUSHED_READ, last, pc, off);
    }
}

/* last_store is swapped before the state so that a reader who sees n's DIRTY also sees n's
 * PC; the value it replaced still names the dirty writer n's store collides with. */
static void store_line(struct coh_model *m, unsigned n, uint64_t off, uint64_t pc)
{
    struct coh_line *line = line_at(m, off);
    uint64_t prev = __atomic_exchange_n(&line->last_store, coh_pack_pc(pc, n), __ATOMIC_ACQ_REL);
    uint64_t old = apply(m, line, n, step_store);
    /* Reported as n's copy becomes dirty: n's further stores into a line it already holds
     * dirty are the same collision, not a new one (the kernel's memset of a struct page
     * would otherwise count once per word, against a writer PC already replaced). */
    if ((coh_nibble(old, n) & COH_COPY_MASK) != COH_DIRTY)
        report_dirty_others(m, old, n, COH_LOST_WRITE, prev, pc, off);
    if (coh_nibble(old, n) & COH_STALE)  /* its write-back will put old bytes over newer ones */
        report_against_writeback(m, line, COH_LOST_WRITE, n, pc, off);
}

/* Both words are set before the state, so that the copies this makes stale name it. */
static void nt_store_line(struct coh_model *m, unsigned n, uint64_t off, uint64_t pc)
{
    struct coh_line *line = line_at(m, off);
    uint64_t prev = __atomic_exchange_n(&line->last_store, coh_pack_pc(pc, n), __ATOMIC_ACQ_REL);
    __atomic_store_n(&line->last_writeback, coh_pack_pc(pc, n), __ATOMIC_RELEASE);
    uint64_t old = apply(m, line, n, step_nt_store);
    report_dirty_others(m, old, n, COH_LOST_WRITE, prev, pc, off);
}

typedef void (*line_fn)(struct coh_model *, unsigned, uint64_t, uint64_t);

/* An access may cross a line boundary: it touches every line of [off, off + size) in the FAM. */
static void each_line(struct coh_model *m, unsigned n, uint64_t off, uint64_t size, uint64_t pc,
                      line_fn fn)
{
    if (n >= m->nodes_max || off >= m->fam_size || size == 0)
        return;
    uint64_t end = size > m->fam_size - off ? m->fam_size : off + size;
    for (uint64_t at = off; at < end; at = (at / COH_LINE_SIZE + 1) * COH_LINE_SIZE)
        fn(m, n, at, pc);
}

void coh_load(struct coh_model *m, unsigned n, uint64_t off, uint64_t size, uint64_t pc)
{
    coh_count(m, n, COH_LOADS, 1);
    each_line(m, n, off, size, pc, load_line);
}

void coh_store(struct coh_model *m, unsigned n, uint64_t off, uint64_t size, uint64_t pc)
{
    coh_count(m, n, COH_STORES, 1);
    each_line(m, n, off, size, pc, store_line);
}

void coh_nt_store(struct coh_model *m, unsigned n, uint64_t off, uint64_t size, uint64_t pc)
{
    coh_count(m, n, COH_NT_STORES, 1);
    each_line(m, n, off, size, pc, nt_store_line);
}

/* Whether the flush writes back is n's own business (only n's vCPUs make n's copy dirty), so
 * last_writeback can be set before the state, for the copies it makes stale to name it. */
void coh_flush(struct coh_model *m, unsigned n, uint64_t off, enum coh_flush_kind kind, uint64_t pc)
{
    if (n >= m->nodes_max || off >= m->fam_size)
        return;
    coh_count(m, n, COH_FLUSHES, 1);
    struct coh_line *line = line_at(m, off);
    if (copy_of(__atomic_load_n(&line->state, __ATOMIC_ACQUIRE), n) == COH_DIRTY)
        __atomic_store_n(&line->last_writeback, coh_pack_pc(pc, n), __ATOMIC_RELEASE);
    apply(m, line, n, kind == COH_CLWB ? step_clwb : step_invalidate);
}

void coh_count(struct coh_model *m, unsigned n, enum coh_counter counter, uint64_t by)
{
    if (n < m->nodes_max)
        __atomic_fetch_add(&m->header->node[n].c[counter], by, __ATOMIC_RELAXED);
}

void coh_count_pages(struct coh_model *m, unsigned n, enum coh_page_counter counter, uint64_t by)
{
    if (n < m->nodes_max)
        __atomic_fetch_add(&m->header->pages[n].c[counter], by, __ATOMIC_RELAXED);
}

/* ---- findings ------------------------------------------------------------------------------ */

static uint64_t mix(uint64_t h, uint64_t v)
{
    uint64_t z = h ^ (v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2));
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t finding_key(enum coh_kind kind, unsigned writer, unsigned reader,
                            uint64_t writer_pc, uint64_t reader_pc)
{
    uint64_t h = mix(0, kind);
    h = mix(h, writer);
    h = mix(h, reader);
    h = mix(h, writer_pc);
    h = mix(h, reader_pc);
    return h ? h : 1;
}

/* The reader's share of the table (model.h: why each reader probes only its own share). */
static void share_of(const struct coh_model *m, unsigned reader, uint64_t *first, uint64_t *count)
{
    uint64_t each = m->slots / m->nodes_max;
    *first = each ? reader * each : 0;
    *count = each ? each : m->slots;
}

/* The slot holding key, or an empty one claimed for it (*claimed), or NULL if the share is full. */
static struct coh_finding *slot_for(struct coh_model *m, unsigned reader, uint64_t key, bool *claimed)
{
    uint64_t first, count;
    share_of(m, reader, &first, &count);
    for (uint64_t i = 0; i < count; i++) {
        struct coh_finding *f = &m->findings[first + (key + i) % count];
        uint64_t seen = __atomic_load_n(&f->key, __ATOMIC_ACQUIRE);
        if (seen == 0 && __atomic_compare_exchange_n(&f->key, &seen, key, false,
                                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            *claimed = true;
            return f;
        }
        if (seen == key) {
            *claimed = false;
            return f;
        }
    }
    return NULL;
}

/* A slot someone else just claimed gets its fields before its count: kind, written last of
 * them, says they are there. The claimer is between two stores, so the wait is short; but a
 * claimer killed between them (its QEMU ended) never finishes, and then the fields are written
 * here: the same key means the same fields, so writing them twice does no harm. */
static void fill(struct coh_finding *f, enum coh_kind kind, unsigned writer, unsigned reader,
                 uint64_t writer_pc, uint64_t reader_pc, uint64_t off)
{
    f->writer_node = writer;
    f->reader_node = reader;
    f->writer_pc = writer_pc;
    f->reader_pc = reader_pc;
    f->first_offset = off;
    __atomic_store_n(&f->kind, kind, __ATOMIC_RELEASE);
}

static bool filled_soon(struct coh_finding *f)
{
    for (int spins = 0; spins < 100000; spins++)
        if (__atomic_load_n(&f->kind, __ATOMIC_ACQUIRE) != 0)
            return true;
    return false;
}

void coh_report(struct coh_model *m, enum coh_kind kind, unsigned writer, unsigned reader,
                uint64_t writer_pc, uint64_t reader_pc, uint64_t off)
{
    coh_count(m, reader, COH_FINDINGS, 1);
    bool claimed;
    uint64_t key = finding_key(kind, writer, reader, writer_pc, reader_pc);
    struct coh_finding *f = slot_for(m, reader, key, &claimed);
    if (!f)
        return;
    if (claimed || !filled_soon(f))
        fill(f, kind, writer, reader, writer_pc, reader_pc, off);
    __atomic_store_n(&f->last_offset, off, __ATOMIC_RELAXED);
    __atomic_fetch_add(&f->count, 1, __ATOMIC_RELEASE);
}

const char *coh_kind_name(enum coh_kind kind)
{
    switch (kind) {
    case COH_UNFLUSHED_READ: return "unflushed_read";
    case COH_STALE_READ: return "stale_read";
    case COH_LOST_WRITE: return "lost_write";
    case COH_CLWB_KEPT_STALE: return "clwb_kept_stale";
    }
    return "unknown";
}

/* ---- boot ---------------------------------------------------------------------------------- */

typedef void (*range_fn)(struct coh_model *, unsigned, uint64_t first, uint64_t end);

/* Call fn on the entries of [first, first + count) (entries of `size` bytes from file offset
 * `at`) that lie in the file's data extents: a 1 GiB FAM's model is 384 MiB of lines, mostly
 * holes, and reading a hole would only find zeros (and allocate page cache for them). */
static void each_data_extent(struct coh_model *m, unsigned n, uint64_t at, uint64_t size,
                             uint64_t count, range_fn fn)
{
    uint64_t end = at + count * size;
    if (m->fd < 0) {
        fn(m, n, 0, count);
        return;
    }
    for (off_t data = at; (uint64_t)data < end;) {
        data = lseek(m->fd, data, SEEK_DATA);
        if (data < 0 || (uint64_t)data >= end)
            return;  /* ENXIO: no data after it */
        off_t hole = lseek(m->fd, data, SEEK_HOLE);
        if (hole < 0 || (uint64_t)hole > end)
            hole = end;
        fn(m, n, ((uint64_t)data - at) / size, ((uint64_t)hole - at + size - 1) / size);
        data = hole;
    }
}

/* Clear n's nibble: a CAS, as the other nodes keep running and changing theirs. */
static void forget_copies(struct coh_model *m, unsigned n, uint64_t first, uint64_t end)
{
    for (uint64_t i = first; i < end && i < m->line_count; i++) {
        uint64_t old = __atomic_load_n(&m->lines[i].state, __ATOMIC_ACQUIRE);
        while (coh_nibble(old, n) != 0
               && !__atomic_compare_exchange_n(&m->lines[i].state, &old, with_nibble(old, n, 0),
                                               false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        }
    }
}

/* Empty n's slots, count first: a reader shows only slots whose count is not 0. */
static void forget_findings(struct coh_model *m, unsigned n, uint64_t first, uint64_t end)
{
    for (uint64_t i = first; i < end && i < m->slots; i++) {
        struct coh_finding *f = &m->findings[i];
        if (__atomic_load_n(&f->key, __ATOMIC_ACQUIRE) == 0 || f->reader_node != n)
            continue;
        __atomic_store_n(&f->count, 0, __ATOMIC_SEQ_CST);
        __atomic_store_n(&f->kind, 0, __ATOMIC_SEQ_CST);
        __atomic_store_n(&f->key, 0, __ATOMIC_SEQ_CST);
    }
}

/* A booted node has no copy of anything, and the findings it found before are gone: what the
 * model shows is the findings since the nodes booted. The counters keep counting across boots. */
void coh_boot(struct coh_model *m, unsigned n)
{
    if (n >= m->nodes_max)
        return;
    coh_count(m, n, COH_BOOTS, 1);
    each_data_extent(m, n, m->header->lines_offset, LINE_ENTRY_SIZE, m->line_count, forget_copies);
    each_data_extent(m, n, m->header->findings_offset, SLOT_SIZE, m->slots, forget_findings);
}
