/* bench.procviews's reader: PROCS processes open, read to the end and close PATH,
 * ITERATIONS times each, and the latency of every cycle is kept.
 *
 *   reader PATH ITERATIONS PROCS [CGROUP_PROCS_FILE...]
 *
 * It first joins the cgroups given (writes 0 to each cgroup.procs), forks PROCS
 * readers, lets each warm up, prints "ready" and waits for a line on stdin; then
 * all start at once.  When every reader is done it prints one line:
 *
 *   reads=N wall_ns=N median_ns=N p99_ns=N max_ns=N bytes=N first=<first line read>
 *
 * Built static (gcc -O2 -static), so it runs in any container's root. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WARMUP 20
#define BUF_BYTES 65536

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* One open+read-to-the-end+close; the bytes read, or -1. */
static long read_once(const char *path, char *buf) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    long total = 0;
    for (;;) {
        ssize_t got = read(fd, buf, BUF_BYTES);
        if (got < 0) {
            close(fd);
            return -1;
        }
        if (got == 0)
            break;
        total += got;
    }
    return close(fd) == 0 ? total : -1;
}

static void join_cgroups(int count, char **files) {
    for (int i = 0; i < count; i++) {
        int fd = open(files[i], O_WRONLY);
        if (fd < 0 || write(fd, "0", 1) != 1) {
            perror(files[i]);
            exit(3);
        }
        close(fd);
    }
}

/* A reader: warm up, say so on `ready`, wait for `go` to close, then read. */
static void reader(const char *path, long iterations, uint64_t *out, int ready, int go) {
    static char buf[BUF_BYTES];
    for (int i = 0; i < WARMUP; i++)
        if (read_once(path, buf) <= 0)
            _exit(4);
    char byte = 'r';
    if (write(ready, &byte, 1) != 1 || read(go, &byte, 1) != 0)
        _exit(5);
    for (long i = 0; i < iterations; i++) {
        uint64_t began = now_ns();
        if (read_once(path, buf) <= 0)
            _exit(6);
        out[i] = now_ns() - began;
    }
    _exit(0);
}

static int by_value(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static void report(const char *path, uint64_t *samples, long count, uint64_t wall) {
    static char buf[BUF_BYTES];
    long bytes = read_once(path, buf);
    if (bytes <= 0) {
        perror(path);
        exit(7);
    }
    buf[bytes < BUF_BYTES ? bytes : BUF_BYTES - 1] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    qsort(samples, (size_t)count, sizeof *samples, by_value);
    long p99 = (count * 99 + 99) / 100 - 1; /* nearest rank */
    printf("reads=%ld wall_ns=%llu median_ns=%llu p99_ns=%llu max_ns=%llu bytes=%ld first=%s\n",
           count, (unsigned long long)wall, (unsigned long long)samples[count / 2],
           (unsigned long long)samples[p99], (unsigned long long)samples[count - 1], bytes, buf);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s PATH ITERATIONS PROCS [CGROUP_PROCS_FILE...]\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    long iterations = atol(argv[2]), procs = atol(argv[3]);
    if (iterations < 1 || procs < 1)
        return 2;
    join_cgroups(argc - 4, argv + 4);
    long count = iterations * procs;
    uint64_t *samples = mmap(NULL, (size_t)count * sizeof *samples, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int ready[2], go[2];
    if (samples == MAP_FAILED || pipe(ready) || pipe(go))
        return 3;
    for (long p = 0; p < procs; p++) {
        pid_t pid = fork();
        if (pid < 0)
            return 3;
        if (pid == 0) {
            /* No reader outlives the parent (ended, say, by a Ctrl-C of the bench). */
            if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() == 1)
                _exit(3);
            close(ready[0]);
            close(go[1]);
            reader(path, iterations, samples + p * iterations, ready[1], go[0]);
        }
    }
    close(ready[1]);
    close(go[0]);
    char byte;
    for (long p = 0; p < procs; p++)
        if (read(ready[0], &byte, 1) != 1) {
            fprintf(stderr, "a reader failed before it was ready\n");
            return 4;
        }
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin))
        return 5; /* the readers are killed as this process ends, before they read */
    uint64_t began = now_ns();
    close(go[1]);
    int failed = 0, status;
    while (wait(&status) > 0)
        failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    uint64_t wall = now_ns() - began;
    if (failed) {
        fprintf(stderr, "a reader failed reading %s\n", path);
        return 6;
    }
    report(path, samples, count, wall);
    return 0;
}
