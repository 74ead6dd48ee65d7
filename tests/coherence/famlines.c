/*
 * famlines: one 8-byte value in one cache line of /dev/dax0.0, written by one node and read
 * by another, with or without the flushes non-coherent shared memory needs. The test of dali's
 * coherence checker (tests/test_coherence.py) runs it on two nodes of a checked cluster.
 *
 *   famlines write OFFSET VALUE flush|noflush|nt   store VALUE; write the line back (CLFLUSHOPT
 *                                                  + SFENCE), or not, or store it non-temporally
 *   famlines read OFFSET invalidate|cached         print the value, invalidating the line first
 *                                                  (CLFLUSHOPT + MFENCE), or not
 *   famlines clwbread OFFSET                       CLWB the line (which may keep it cached), then
 *                                                  read it
 *
 * CLFLUSHOPT and CLWB where the CPU has them (a checked node runs TCG's "max" CPU), else CLFLUSH.
 *
 * Built static and -no-pie on the host (the test does it), so the functions' addresses in the
 * guest are the binary's and `doit coherence --binary famlines` names them. Each step is a
 * function of its own, never inlined: the checker reports the code on both sides by name.
 */
#include <cpuid.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define MAPPED (2UL << 20)  /* a devdax mapping is made of 2 MiB pages */

static volatile uint64_t *line_at(uint64_t offset)
{
    int fd = open("/dev/dax0.0", O_RDWR);
    if (fd < 0) { perror("/dev/dax0.0"); exit(2); }
    uint8_t *base = mmap(NULL, MAPPED, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) { perror("mmap /dev/dax0.0"); exit(2); }
    if (offset % 64 || offset + 64 > MAPPED) { fprintf(stderr, "offset must be a line below 2 MiB\n"); exit(2); }
    return (volatile uint64_t *)(base + offset);
}

/* CPUID leaf 7: EBX bit 23 CLFLUSHOPT, bit 24 CLWB. An unchecked node runs TCG's default CPU,
 * which has neither: there CLFLUSH stands in (it writes back and invalidates, as both need). */
static int has(int bit)
{
    unsigned a, b, c, d;
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b >> bit & 1);
}

static inline __attribute__((always_inline)) void flush_line(volatile uint64_t *p, int clwb)
{
    if (clwb && has(24))
        __asm__ volatile("clwb %0" : "+m"(*(volatile char *)p) :: "memory");
    else if (has(23))
        __asm__ volatile("clflushopt %0" : "+m"(*(volatile char *)p) :: "memory");
    else
        __asm__ volatile("clflush %0" : "+m"(*(volatile char *)p) :: "memory");
}

NOINLINE static void writer_store(volatile uint64_t *p, uint64_t value) { *p = value; }

NOINLINE static void writer_store_nt(volatile uint64_t *p, uint64_t value)
{
    __asm__ volatile("movnti %1, %0" : "=m"(*p) : "r"(value) : "memory");
}

NOINLINE static void writer_flush(volatile uint64_t *p)
{
    flush_line(p, 0);
    __asm__ volatile("sfence" ::: "memory");
}

NOINLINE static void reader_invalidate(volatile uint64_t *p)
{
    flush_line(p, 0);
    __asm__ volatile("mfence" ::: "memory");
}

NOINLINE static void reader_clwb(volatile uint64_t *p)
{
    flush_line(p, 1);
    __asm__ volatile("mfence" ::: "memory");
}

NOINLINE static uint64_t reader_load(volatile uint64_t *p) { return *p; }

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: see famlines.c\n"); return 2; }
    volatile uint64_t *p = line_at(strtoull(argv[2], NULL, 0));
    if (!strcmp(argv[1], "write") && argc == 5) {
        uint64_t value = strtoull(argv[3], NULL, 0);
        if (!strcmp(argv[4], "nt")) {
            writer_store_nt(p, value);
            __asm__ volatile("sfence" ::: "memory");
        } else {
            writer_store(p, value);
            if (!strcmp(argv[4], "flush"))
                writer_flush(p);
        }
        return 0;
    }
    if (!strcmp(argv[1], "read") && argc == 4) {
        if (!strcmp(argv[3], "invalidate"))
            reader_invalidate(p);
        printf("%#llx\n", (unsigned long long)reader_load(p));
        return 0;
    }
    if (!strcmp(argv[1], "clwbread")) {
        reader_clwb(p);
        printf("%#llx\n", (unsigned long long)reader_load(p));
        return 0;
    }
    fprintf(stderr, "usage: see famlines.c\n");
    return 2;
}
