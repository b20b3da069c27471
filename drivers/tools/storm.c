/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * storm: the throughput benchmark's syscall storm, run inside the guest.
 *
 * Built static by harness/build/tools.py (build_storm):
 *   python -m ziglang cc -target <arch>-linux-musl -static -O2 -Wall -Werror -o storm storm.c
 *
 * Usage: storm MIX THREADS DURATION_MS [--ready-fd N]
 *   MIX          getppid  each worker loops syscall(SYS_getppid)            (1 syscall an iteration)
 *                rw       each worker owns a pipe and loops write(1 byte) + read(1 byte)  (2)
 *   THREADS      worker threads; 0: the online CPUs (sysconf(_SC_NPROCESSORS_ONLN))
 *   DURATION_MS  the measured window
 *   --ready-fd N once every worker is parked at the start gate: write "ready\n" to fd N (closed
 *                afterwards when N > 2), then block until one byte arrives on stdin (the harness
 *                attaches a driver in between), then start
 *
 * The window: the main thread reads CLOCK_MONOTONIC, opens the gate (one futex wake), sleeps
 * DURATION_MS (nanosleep), sets the stop flag, joins the workers and reads the clock again. Inside
 * it a worker makes no syscall but its mix (it parked in FUTEX_WAIT before the window opened; it
 * only returns from it): each checks the stop flag (a relaxed atomic load) every iteration and
 * counts its syscalls in a local, stored once at the end.
 *
 * Output, one JSON line on stdout:
 *   {"mix": "getppid", "threads": 2, "duration_s": 0.200081234, "syscalls": 2345678,
 *    "syscalls_per_s": 11723456.7, "per_thread": [1172839, 1172839], "pid": 123}
 * Exit 0; 2 on bad usage (one line on stderr); 1 when a setup step or a syscall of the mix fails.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define FUTEX_WAIT_PRIVATE 128 /* FUTEX_WAIT | FUTEX_PRIVATE_FLAG */
#define FUTEX_WAKE_PRIVATE 129 /* FUTEX_WAKE | FUTEX_PRIVATE_FLAG */
#define MAX_THREADS 4096
#define MAX_DURATION_MS 86400000L /* a day */
#define CACHE_LINE 128            /* the largest of the six (ppc64le, some arm64 parts) */
#define STACK_SIZE 65536          /* musl would give each worker the main program's PT_GNU_STACK size */

enum mix { MIX_GETPPID, MIX_RW };

struct worker {
	pthread_t thread;
	int rfd, wfd;           /* rw: this worker's pipe */
	uint64_t syscalls;      /* stored once, when the worker stops */
	int error;              /* errno of a failed syscall of the mix, 0 if none */
} __attribute__((aligned(CACHE_LINE)));

static enum mix mix;
static _Alignas(CACHE_LINE) atomic_int stop;   /* set by main at the end of the window */
static _Alignas(CACHE_LINE) atomic_int gate;   /* 1: the window is open */
static _Alignas(CACHE_LINE) atomic_int parked; /* workers that reached the gate */
static int nthreads;

static void usage(const char *why)
{
	fprintf(stderr, "storm: %s; usage: storm getppid|rw THREADS DURATION_MS [--ready-fd N]\n", why);
	exit(2);
}

static void fail(const char *what, int err)
{
	fprintf(stderr, "storm: %s: %s\n", what, strerror(err));
	exit(1);
}

static long futex(atomic_int *addr, int op, int val)
{
	return syscall(SYS_futex, addr, op, val, NULL, NULL, 0);
}

/* A decimal in [lo, hi], or usage(what). */
static long number(const char *text, long lo, long hi, const char *what)
{
	char *end;
	long value;

	if (*text < '0' || *text > '9')
		usage(what);
	errno = 0;
	value = strtol(text, &end, 10);
	if (errno || *end || value < lo || value > hi)
		usage(what);
	return value;
}

static void *work(void *arg)
{
	struct worker *w = arg;
	uint64_t n = 0;
	char byte = 's';

	/* park at the gate: tell main the last one arrived, sleep until the window opens */
	if (atomic_fetch_add(&parked, 1) + 1 == nthreads)
		futex(&parked, FUTEX_WAKE_PRIVATE, 1);
	while (!atomic_load(&gate))
		futex(&gate, FUTEX_WAIT_PRIVATE, 0);

	if (mix == MIX_GETPPID) {
		while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
			syscall(SYS_getppid);
			n++;
		}
	} else {
		int rfd = w->rfd, wfd = w->wfd;

		while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
			if (write(wfd, &byte, 1) != 1 || read(rfd, &byte, 1) != 1) {
				w->error = errno ? errno : EIO;
				break;
			}
			n += 2;
		}
	}
	w->syscalls = n;
	return NULL;
}

/* "ready\n" on fd, then one byte from stdin: the harness attaches its driver in between. */
static void handshake(int fd)
{
	static const char ready[] = "ready\n";
	size_t done = 0;
	char byte;
	ssize_t got;

	while (done < sizeof(ready) - 1) {
		ssize_t put = write(fd, ready + done, sizeof(ready) - 1 - done);

		if (put < 0 && errno == EINTR)
			continue;
		if (put <= 0)
			fail("writing \"ready\" to the --ready-fd", put < 0 ? errno : EIO);
		done += (size_t)put;
	}
	if (fd > 2)
		close(fd);
	do
		got = read(0, &byte, 1);
	while (got < 0 && errno == EINTR);
	if (got < 0)
		fail("reading the start byte from stdin", errno);
	if (got == 0) {
		fprintf(stderr, "storm: stdin closed before the start byte\n");
		exit(1);
	}
}

static double seconds(const struct timespec *a, const struct timespec *b)
{
	return (double)(b->tv_sec - a->tv_sec) + (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

int main(int argc, char **argv)
{
	struct worker *workers;
	pthread_attr_t attr;
	struct timespec start, end, left;
	long duration_ms, ready_fd = -1;
	uint64_t total = 0;
	double duration;
	int i, err, parked_now;

	if (argc != 4 && argc != 6)
		usage(argc < 4 ? "missing arguments" : "wrong number of arguments");
	if (!strcmp(argv[1], "getppid"))
		mix = MIX_GETPPID;
	else if (!strcmp(argv[1], "rw"))
		mix = MIX_RW;
	else
		usage("MIX must be getppid or rw");
	nthreads = (int)number(argv[2], 0, MAX_THREADS, "THREADS must be 0..4096 (0: one per online CPU)");
	duration_ms = number(argv[3], 1, MAX_DURATION_MS, "DURATION_MS must be 1..86400000");
	if (argc == 6) {
		if (strcmp(argv[4], "--ready-fd"))
			usage("unknown option (only --ready-fd N)");
		ready_fd = number(argv[5], 0, 1 << 20, "--ready-fd needs a file descriptor number");
	}
	if (nthreads == 0) {
		long cpus = sysconf(_SC_NPROCESSORS_ONLN);

		nthreads = cpus < 1 ? 1 : cpus > MAX_THREADS ? MAX_THREADS : (int)cpus;
	}

	/* setup, outside the window */
	workers = aligned_alloc(CACHE_LINE, sizeof(*workers) * (size_t)nthreads);
	if (!workers)
		fail("allocating the workers", ENOMEM);
	memset(workers, 0, sizeof(*workers) * (size_t)nthreads);
	for (i = 0; i < nthreads; i++) {
		int fds[2] = {-1, -1};

		if (mix == MIX_RW && pipe(fds))
			fail("pipe", errno);
		workers[i].rfd = fds[0];
		workers[i].wfd = fds[1];
	}
	err = pthread_attr_init(&attr);
	if (!err)
		err = pthread_attr_setstacksize(&attr, STACK_SIZE);
	if (err)
		fail("pthread_attr_setstacksize", err);
	for (i = 0; i < nthreads; i++) {
		err = pthread_create(&workers[i].thread, &attr, work, &workers[i]);
		if (err)
			fail("pthread_create", err);
	}
	pthread_attr_destroy(&attr);
	while ((parked_now = atomic_load(&parked)) < nthreads)
		futex(&parked, FUTEX_WAIT_PRIVATE, parked_now);
	if (ready_fd >= 0)
		handshake((int)ready_fd);

	/* the window */
	clock_gettime(CLOCK_MONOTONIC, &start);
	atomic_store(&gate, 1);
	futex(&gate, FUTEX_WAKE_PRIVATE, MAX_THREADS);
	left.tv_sec = duration_ms / 1000;
	left.tv_nsec = duration_ms % 1000 * 1000000L;
	while (nanosleep(&left, &left) && errno == EINTR)
		;
	atomic_store_explicit(&stop, 1, memory_order_relaxed);
	for (i = 0; i < nthreads; i++)
		pthread_join(workers[i].thread, NULL);
	clock_gettime(CLOCK_MONOTONIC, &end);

	for (i = 0; i < nthreads; i++) {
		if (workers[i].error)
			fail(mix == MIX_RW ? "write/read on the worker's pipe" : "getppid", workers[i].error);
		total += workers[i].syscalls;
	}
	duration = seconds(&start, &end);
	printf("{\"mix\": \"%s\", \"threads\": %d, \"duration_s\": %.9f, \"syscalls\": %llu, "
	       "\"syscalls_per_s\": %.3f, \"per_thread\": [",
	       argv[1], nthreads, duration, (unsigned long long)total, (double)total / duration);
	for (i = 0; i < nthreads; i++)
		printf("%s%llu", i ? ", " : "", (unsigned long long)workers[i].syscalls);
	printf("], \"pid\": %d}\n", (int)getpid());
	if (fflush(stdout) || ferror(stdout))
		fail("writing the result", errno ? errno : EIO);
	return 0;
}
