/*
 * A host driver for the coherence model and decoder (dali/coherence/c): tests/
 * test_coherence_model.py builds it and checks what it prints.
 *
 *   model_test layout                           the file layout, "name value" lines
 *   model_test create PATH FAM_SIZE MODE [SLOTS] a fresh model file (MODE strict or cached)
 *   model_test dump PATH                        a model file's findings, counters and lines
 *   model_test scenario NAME MODE DIR           run a scenario on DIR/NAME.model, then dump it
 *   model_test decode HEXBYTES                  how decode.c reads one instruction
 *
 * What dump prints, one fact a line:
 *   finding kind=K writer=N reader=N writer_pc=0x.. reader_pc=0x.. count=N first_offset=N last_offset=N
 *   counters node=N boots=N loads=N stores=N nt_stores=N flushes=N fences=N findings=N flush_unresolved=N
 *   line offset=N node=N copy=none|invalid|clean|dirty stale=0|1 clwb_kept=0|1   (non-zero nibbles)
 *   last_store offset=N node=N pc=0x..   last_writeback offset=N node=N pc=0x..
 * and the concurrency scenario adds "check NAME ok" or "check NAME FAIL why" lines.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "decode.h"
#include "model.h"

static void die(const char *what)
{
    fprintf(stderr, "model_test: %s\n", what);
    exit(2);
}

/* ---- layout ------------------------------------------------------------------------------ */

#define FIELD(prefix, type, field) printf(prefix "." #field " %zu\n", offsetof(type, field))

static void print_layout(void)
{
    printf("magic %s\nversion %d\nnodes_max %d\nline_size %d\n", COH_MAGIC, COH_VERSION,
           COH_NODES_MAX, COH_LINE_SIZE);
    printf("header.size %zu\n", sizeof(struct coh_header));
    FIELD("header", struct coh_header, magic);
    FIELD("header", struct coh_header, version);
    FIELD("header", struct coh_header, nodes_max);
    FIELD("header", struct coh_header, fam_size);
    FIELD("header", struct coh_header, line_size);
    FIELD("header", struct coh_header, lines);
    FIELD("header", struct coh_header, lines_offset);
    FIELD("header", struct coh_header, findings_offset);
    FIELD("header", struct coh_header, findings_slots);
    FIELD("header", struct coh_header, mode);
    FIELD("header", struct coh_header, reserved);
    FIELD("header", struct coh_header, node);
    printf("node.size %zu\n", sizeof(struct coh_node_counters));
    static const char *const counters[] = {
        "boots", "loads", "stores", "nt_stores", "flushes", "fences", "findings", "flush_unresolved",
    };
    for (int i = 0; i < COH_COUNTERS; i++)
        printf("node.%s %zu\n", counters[i], i * sizeof(uint64_t));
    FIELD("header", struct coh_header, pages);
    printf("pages.size %zu\n", sizeof(struct coh_node_pages));
    printf("pages.rechecked %zu\npages.stale %zu\n", COH_PAGES_RECHECKED * sizeof(uint64_t),
           COH_PAGES_STALE * sizeof(uint64_t));
    printf("line.size %zu\n", sizeof(struct coh_line));
    FIELD("line", struct coh_line, state);
    FIELD("line", struct coh_line, last_store);
    FIELD("line", struct coh_line, last_writeback);
    printf("finding.size %zu\n", sizeof(struct coh_finding));
    FIELD("finding", struct coh_finding, key);
    FIELD("finding", struct coh_finding, kind);
    FIELD("finding", struct coh_finding, writer_node);
    FIELD("finding", struct coh_finding, reader_node);
    FIELD("finding", struct coh_finding, writer_pc);
    FIELD("finding", struct coh_finding, reader_pc);
    FIELD("finding", struct coh_finding, count);
    FIELD("finding", struct coh_finding, first_offset);
    FIELD("finding", struct coh_finding, last_offset);
    printf("mode.strict %d\nmode.cached %d\n", COH_STRICT, COH_CACHED);
    printf("copy.none %d\ncopy.invalid %d\ncopy.clean %d\ncopy.dirty %d\n", COH_NONE, COH_INVALID,
           COH_CLEAN, COH_DIRTY);
    printf("flag.stale %u\nflag.clwb_kept %u\n", COH_STALE, COH_CLWB_KEPT);
    for (int k = COH_UNFLUSHED_READ; k <= COH_CLWB_KEPT_STALE; k++)
        printf("kind.%s %d\n", coh_kind_name(k), k);
}

/* ---- model files --------------------------------------------------------------------------- */

static enum coh_mode parse_mode(const char *s)
{
    if (!strcmp(s, "strict"))
        return COH_STRICT;
    if (!strcmp(s, "cached"))
        return COH_CACHED;
    die("the mode is strict or cached");
    return COH_STRICT;
}

/* As dali makes it: sparse, only the header written. */
static void create(const char *path, uint64_t fam_size, enum coh_mode mode, uint64_t slots)
{
    static struct coh_header h;
    memset(&h, 0, sizeof h);
    uint64_t size = coh_format(&h, fam_size, slots, mode);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ftruncate(fd, (off_t)size) != 0 || pwrite(fd, &h, sizeof h, 0) != sizeof h)
        die(strerror(errno));
    close(fd);
}

static void open_model(struct coh_model *m, const char *path)
{
    char err[512];
    if (coh_open(m, path, err, sizeof err) != 0)
        die(err);
}

static const char *const copy_names[] = { "none", "invalid", "clean", "dirty" };

static void dump_lines(const struct coh_model *m)
{
    for (uint64_t i = 0; i < m->line_count; i++) {
        const struct coh_line *l = &m->lines[i];
        uint64_t off = i * COH_LINE_SIZE;
        for (unsigned n = 0; n < COH_NODES_MAX; n++) {
            unsigned nib = coh_nibble(l->state, n);
            if (nib)
                printf("line offset=%" PRIu64 " node=%u copy=%s stale=%d clwb_kept=%d\n", off, n,
                       copy_names[nib & COH_COPY_MASK], !!(nib & COH_STALE), !!(nib & COH_CLWB_KEPT));
        }
        if (l->state >> 32)
            printf("line offset=%" PRIu64 " high_bits=0x%" PRIx64 "\n", off, l->state >> 32);
        if (l->last_store)
            printf("last_store offset=%" PRIu64 " node=%u pc=0x%" PRIx64 "\n", off,
                   coh_packed_node(l->last_store), coh_packed_pc(l->last_store));
        if (l->last_writeback)
            printf("last_writeback offset=%" PRIu64 " node=%u pc=0x%" PRIx64 "\n", off,
                   coh_packed_node(l->last_writeback), coh_packed_pc(l->last_writeback));
    }
}

static void dump(const struct coh_model *m)
{
    for (uint64_t i = 0; i < m->slots; i++) {
        const struct coh_finding *f = &m->findings[i];
        if (f->count)
            printf("finding kind=%s writer=%u reader=%u writer_pc=0x%" PRIx64 " reader_pc=0x%" PRIx64
                   " count=%" PRIu64 " first_offset=%" PRIu64 " last_offset=%" PRIu64 "\n",
                   coh_kind_name(f->kind), f->writer_node, f->reader_node, f->writer_pc, f->reader_pc,
                   f->count, f->first_offset, f->last_offset);
    }
    for (unsigned n = 0; n < m->nodes_max; n++) {
        const uint64_t *c = m->header->node[n].c;
        printf("counters node=%u boots=%" PRIu64 " loads=%" PRIu64 " stores=%" PRIu64
               " nt_stores=%" PRIu64 " flushes=%" PRIu64 " fences=%" PRIu64 " findings=%" PRIu64
               " flush_unresolved=%" PRIu64 "\n", n, c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]);
    }
    dump_lines(m);
}

/* ---- scenarios: two or three nodes, A, B and C ----------------------------------------------- */

enum { A, B, C };

/* Distinct PCs, so that a finding shows which access was which; A's store is a kernel address,
 * to see the packing's sign extension. */
#define A_STORE 0xffffffff81000010ull
#define A_FLUSH 0x401010ull
#define A_NT    0x401020ull
#define A_LOAD  0x401030ull
#define B_LOAD  0x402000ull
#define B_LOAD2 0x402008ull
#define B_FLUSH 0x402010ull
#define B_STORE 0x402020ull
#define B_CLWB  0x402030ull

#define L0 0x1000ull  /* FAM offsets of three lines */
#define L1 0x2040ull
#define L2 0x3080ull

static void flushed(struct coh_model *m, enum coh_flush_kind writers_flush)
{
    coh_store(m, A, L0, 8, A_STORE);
    coh_flush(m, A, L0, writers_flush, A_FLUSH);
    coh_flush(m, B, L0, COH_CLFLUSH, B_FLUSH);
    coh_load(m, B, L0, 8, B_LOAD);
}

static void sc_flushed_clflushopt(struct coh_model *m) { flushed(m, COH_CLFLUSHOPT); }
static void sc_flushed_clwb(struct coh_model *m) { flushed(m, COH_CLWB); }

static void sc_unflushed(struct coh_model *m)
{
    coh_store(m, A, L0, 8, A_STORE);
    coh_flush(m, B, L0, COH_CLFLUSH, B_FLUSH);
    coh_load(m, B, L0, 8, B_LOAD);
}

static void sc_stale(struct coh_model *m)
{
    coh_load(m, B, L0, 8, B_LOAD);
    coh_store(m, A, L0, 8, A_STORE);
    coh_flush(m, A, L0, COH_CLFLUSHOPT, A_FLUSH);
    coh_load(m, B, L0, 8, B_LOAD);
}

/* B took no copy since it booted: in strict mode it may still hold a prefetched one. */
static void sc_stale_untouched(struct coh_model *m)
{
    coh_store(m, A, L0, 8, A_STORE);
    coh_flush(m, A, L0, COH_CLFLUSHOPT, A_FLUSH);
    coh_load(m, B, L0, 8, B_LOAD);
}

static void sc_lost_write(struct coh_model *m)
{
    coh_store(m, A, L0, 8, A_STORE);
    coh_store(m, B, L0, 8, B_STORE);
}

/* B stores into its stale copy: its write-back will put old bytes over A's. */
static void sc_stale_store(struct coh_model *m)
{
    coh_load(m, B, L0, 8, B_LOAD);
    coh_store(m, A, L0, 8, A_STORE);
    coh_flush(m, A, L0, COH_CLFLUSHOPT, A_FLUSH);
    coh_store(m, B, L0, 8, B_STORE);
}

static void sc_clwb_kept(struct coh_model *m)
{
    coh_load(m, B, L0, 8, B_LOAD);
    coh_store(m, A, L0, 8, A_STORE);
    coh_flush(m, A, L0, COH_CLFLUSHOPT, A_FLUSH);
    coh_flush(m, B, L0, COH_CLWB, B_CLWB);
    coh_load(m, B, L0, 8, B_LOAD);
}

static void sc_nt_store(struct coh_model *m)
{
    coh_nt_store(m, A, L0, 8, A_NT);
    coh_flush(m, B, L0, COH_CLFLUSH, B_FLUSH);
    coh_load(m, B, L0, 8, B_LOAD);
}

static void sc_nt_store_stale(struct coh_model *m)
{
    coh_load(m, B, L0, 8, B_LOAD);
    coh_nt_store(m, A, L0, 8, A_NT);
    coh_load(m, B, L0, 8, B_LOAD);
}

/* The same finding twice is one slot counted twice; another reader PC is another slot. */
static void sc_same_twice(struct coh_model *m)
{
    sc_stale(m);
    coh_load(m, B, L0, 8, B_LOAD);
    coh_load(m, B, L0, 8, B_LOAD2);
}

/* An 8-byte store across the boundary of L0's last line and the next one. */
static void sc_crossing(struct coh_model *m)
{
    coh_store(m, A, L0 + 60, 8, A_STORE);
    coh_load(m, B, L0 + 60, 8, B_LOAD);
}

/* A finding of each reader and a copy of each node; then B boots again. */
static void sc_boot(struct coh_model *m)
{
    coh_store(m, A, L0, 8, A_STORE);
    coh_store(m, B, L1, 8, B_STORE);
    coh_load(m, B, L0, 8, B_LOAD);
    coh_load(m, A, L1, 8, A_LOAD);
    coh_load(m, B, L2, 8, B_LOAD);
    coh_boot(m, B);
}

/* Three nodes: one write-back makes both other copies stale. */
static void sc_three_nodes(struct coh_model *m)
{
    coh_load(m, B, L0, 8, B_LOAD);
    coh_load(m, C, L0, 8, B_LOAD);
    coh_store(m, A, L0, 8, A_STORE);
    coh_flush(m, A, L0, COH_CLWB, A_FLUSH);
    coh_load(m, B, L0, 8, B_LOAD);
    coh_load(m, C, L0, 8, B_LOAD);
}

/* ---- concurrency: threads as vCPUs of several nodes, on the same few lines ------------------ */

#define CC_NODES 4
#define CC_THREADS_PER_NODE 2
#define CC_LINES 16
#define CC_RANDOM_OPS 200000
#define CC_ROUNDS 200000

struct worker {
    struct coh_model *m;
    unsigned node, index;
    uint64_t counts[COH_COUNTERS];
    uint64_t wrong_nibbles;
    pthread_barrier_t *barrier;
};

static uint64_t next_random(uint64_t *s)
{
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return *s;
}

/* Random accesses and flushes with a few PCs a node, so the findings fit their slots. */
static void random_phase(struct worker *w)
{
    uint64_t seed = 0x9e3779b97f4a7c15ull * (w->node * 8 + w->index + 1);
    for (int i = 0; i < CC_RANDOM_OPS; i++) {
        uint64_t r = next_random(&seed), off = (r >> 8) % CC_LINES * COH_LINE_SIZE;
        uint64_t pc = 0x1000 * (w->node + 1) + (r & 3) * 8;
        switch ((r >> 4) % 6) {
        case 0: case 1: coh_load(w->m, w->node, off, 8, pc); w->counts[COH_LOADS]++; break;
        case 2: coh_store(w->m, w->node, off, 8, pc); w->counts[COH_STORES]++; break;
        case 3: coh_nt_store(w->m, w->node, off, 8, pc); w->counts[COH_NT_STORES]++; break;
        case 4: coh_flush(w->m, w->node, off, COH_CLFLUSHOPT, pc); w->counts[COH_FLUSHES]++; break;
        case 5: coh_flush(w->m, w->node, off, COH_CLWB, pc); w->counts[COH_FLUSHES]++; break;
        }
    }
}

/* A store then an invalidation by node w->node, checked: another node's write-back never
 * touches a DIRTY or INVALID copy, so the node's own nibble is what its last access made it (a
 * store keeps CLWB_KEPT from the random phase). A lost compare-and-swap, another node's update
 * computed from an older word, would show as another value. */
static void store_and_invalidate(struct worker *w, uint64_t l)
{
    struct coh_line *line = &w->m->lines[l];
    coh_store(w->m, w->node, l * COH_LINE_SIZE, 8, 0x9000);
    w->wrong_nibbles += (coh_nibble(__atomic_load_n(&line->state, __ATOMIC_ACQUIRE), w->node)
                         & ~COH_CLWB_KEPT) != COH_DIRTY;
    coh_flush(w->m, w->node, l * COH_LINE_SIZE, COH_CLFLUSH, 0x9008);
    w->wrong_nibbles += coh_nibble(__atomic_load_n(&line->state, __ATOMIC_ACQUIRE), w->node)
                        != COH_INVALID;
    w->counts[COH_STORES]++, w->counts[COH_FLUSHES]++;
}

/* Each node's first thread, all nodes at once: one hot line for long enough that the nodes'
 * threads overlap even on two host CPUs, then every line once, to end with all INVALID. */
static void final_phase(struct worker *w)
{
    if (w->index != 0)
        return;
    for (int round = 0; round < CC_ROUNDS; round++)
        store_and_invalidate(w, 0);
    for (uint64_t l = 0; l < CC_LINES; l++)
        store_and_invalidate(w, l);
}

static void *work(void *arg)
{
    struct worker *w = arg;
    random_phase(w);
    pthread_barrier_wait(w->barrier);
    final_phase(w);
    return NULL;
}

static void check(const char *name, int ok, const char *why)
{
    printf("check %s %s%s%s\n", name, ok ? "ok" : "FAIL", ok ? "" : " ", ok ? "" : why);
}

/* The nodes without a thread only ever get STALE, and that only in strict mode. */
static void check_states(const struct coh_model *m)
{
    char why[128] = "";
    for (uint64_t i = 0; i < CC_LINES && !why[0]; i++)
        for (unsigned n = 0; n < COH_NODES_MAX; n++) {
            unsigned got = coh_nibble(m->lines[i].state, n);
            unsigned want = n < CC_NODES ? COH_INVALID : m->mode == COH_STRICT ? COH_STALE : 0;
            if (got != want || m->lines[i].state >> 32)
                snprintf(why, sizeof why, "line %" PRIu64 " node %u: %u, not %u (word 0x%" PRIx64 ")",
                         i, n, got, want, m->lines[i].state);
        }
    check("final_states", !why[0], why);
}

static void check_counters(const struct coh_model *m, struct worker *ws, int count)
{
    char why[128] = "";
    for (unsigned n = 0; n < CC_NODES; n++)
        for (int c = COH_LOADS; c <= COH_FLUSHES; c++) {
            uint64_t want = 0;
            for (int t = 0; t < count; t++)
                want += ws[t].node == n ? ws[t].counts[c] : 0;
            if (m->header->node[n].c[c] != want)
                snprintf(why, sizeof why, "node %u counter %d: %" PRIu64 ", not %" PRIu64, n, c,
                         m->header->node[n].c[c], want);
        }
    check("access_counters", !why[0], why);
}

/* Every occurrence is in its reader's counter and in one slot; no key has two slots, and a
 * slot lies in its reader's share of the table. */
static void check_findings(const struct coh_model *m)
{
    uint64_t sums[COH_NODES_MAX] = { 0 }, total = 0, share = m->slots / m->nodes_max;
    int duplicate = 0, misplaced = 0;
    for (uint64_t i = 0; i < m->slots; i++) {
        const struct coh_finding *f = &m->findings[i];
        if (!f->key)
            continue;
        sums[f->reader_node] += f->count;
        misplaced += i / share != f->reader_node || f->kind < 1 || f->kind > 4 || !f->count;
        for (uint64_t j = i + 1; j < m->slots; j++)
            duplicate += m->findings[j].key == f->key;
    }
    char why[128] = "";
    for (unsigned n = 0; n < COH_NODES_MAX; n++) {
        total += sums[n];
        if (sums[n] != m->header->node[n].c[COH_FINDINGS])
            snprintf(why, sizeof why, "node %u: slots count %" PRIu64 ", counter %" PRIu64, n,
                     sums[n], m->header->node[n].c[COH_FINDINGS]);
    }
    check("findings_match_counters", !why[0], why);
    check("findings_found", total > 0, "no finding at all");
    check("findings_one_slot_a_key", !duplicate, "a key in two slots");
    check("findings_in_their_share", !misplaced, "a slot outside its reader's share, or half-filled");
}

static void sc_concurrency(struct coh_model *m)
{
    enum { COUNT = CC_NODES * CC_THREADS_PER_NODE };
    struct worker ws[COUNT];
    pthread_t threads[COUNT];
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, COUNT);
    for (int t = 0; t < COUNT; t++) {
        ws[t] = (struct worker){ .m = m, .node = t % CC_NODES, .index = t / CC_NODES,
                                 .barrier = &barrier };
        if (pthread_create(&threads[t], NULL, work, &ws[t]) != 0)
            die("cannot start a thread");
    }
    for (int t = 0; t < COUNT; t++)
        pthread_join(threads[t], NULL);
    pthread_barrier_destroy(&barrier);
    uint64_t wrong = 0;
    for (int t = 0; t < COUNT; t++)
        wrong += ws[t].wrong_nibbles;
    check("own_nibble_after_each_access", !wrong, "another node's update undid one");
    check_states(m);
    check_counters(m, ws, COUNT);
    check_findings(m);
}

struct scenario {
    const char *name;
    void (*run)(struct coh_model *);
    unsigned nodes;
};

static const struct scenario scenarios[] = {
    { "flushed_clflushopt", sc_flushed_clflushopt, 2 },
    { "flushed_clwb", sc_flushed_clwb, 2 },
    { "unflushed", sc_unflushed, 2 },
    { "stale", sc_stale, 2 },
    { "stale_untouched", sc_stale_untouched, 2 },
    { "lost_write", sc_lost_write, 2 },
    { "stale_store", sc_stale_store, 2 },
    { "clwb_kept", sc_clwb_kept, 2 },
    { "nt_store", sc_nt_store, 2 },
    { "nt_store_stale", sc_nt_store_stale, 2 },
    { "same_twice", sc_same_twice, 2 },
    { "crossing", sc_crossing, 2 },
    { "boot", sc_boot, 2 },
    { "three_nodes", sc_three_nodes, 3 },
    { "concurrency", sc_concurrency, CC_NODES },
};

/* A fresh model of 1 MiB, its nodes booted as their plugins would, the scenario, the dump. */
static void run_scenario(const char *name, const char *mode, const char *dir)
{
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++) {
        if (strcmp(scenarios[i].name, name) != 0)
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s-%s.model", dir, name, mode);
        create(path, 1 << 20, parse_mode(mode), 65536);
        struct coh_model m;
        open_model(&m, path);
        for (unsigned n = 0; n < scenarios[i].nodes; n++)
            coh_boot(&m, n);
        scenarios[i].run(&m);
        dump(&m);
        coh_close(&m);
        return;
    }
    die("no such scenario");
}

/* ---- decode -------------------------------------------------------------------------------- */

static void decode(const char *hex)
{
    uint8_t bytes[16];
    size_t n = 0;
    for (; hex[0] && hex[1] && n < sizeof bytes; hex += 2) {
        if (sscanf(hex, "%2hhx", &bytes[n]) != 1)
            die("decode takes hex bytes");
        n++;
    }
    struct coh_insn d;
    coh_decode(bytes, n, &d);
    static const char *const segs[] = { "none", "fs", "gs" };
    printf("kind=%s base=%d index=%d scale=%u disp=%" PRId64 " rip_relative=%d addr32=%d seg=%s"
           " length=%u\n", coh_insn_kind_name(d.kind), d.base, d.index, d.scale, d.disp,
           d.rip_relative, d.addr32, segs[d.seg], d.length);
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "layout"))
        print_layout();
    else if ((argc == 5 || argc == 6) && !strcmp(argv[1], "create"))
        create(argv[2], strtoull(argv[3], NULL, 0), parse_mode(argv[4]),
               argc == 6 ? strtoull(argv[5], NULL, 0) : 65536);
    else if (argc == 3 && !strcmp(argv[1], "dump")) {
        struct coh_model m;
        open_model(&m, argv[2]);
        dump(&m);
    } else if (argc == 5 && !strcmp(argv[1], "scenario"))
        run_scenario(argv[2], argv[3], argv[4]);
    else if (argc == 3 && !strcmp(argv[1], "decode"))
        decode(argv[2]);
    else
        die("usage: layout | create PATH FAM_SIZE MODE [SLOTS] | dump PATH"
            " | scenario NAME MODE DIR | decode HEXBYTES");
    return 0;
}
