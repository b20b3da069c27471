/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * The ia32 suite's 32-bit workload: i386 syscalls, each logged with what a correct driver must
 * report for it once translated to its x86_64 equivalent (drivers/common/kmx_ia32.h).
 *
 * One source, built two ways (harness/build/tools.py):
 *   int80  gcc -m32 -nostdlib -static -ffreestanding -fno-pic -fno-stack-protector -fno-builtin -O1
 *          -DKMX_INT80 -Wall -Werror: no libc, its own _start, every syscall an inline `int $0x80`
 *   musl   python -m ziglang cc -target x86-linux-musl -static -O2 -Wall -Werror: libc's syscall(),
 *          which enters through the vDSO's __kernel_vsyscall (call *%gs:16: sysenter)
 * so both i386 entry paths are covered.
 *
 * Usage: prog WORKDIR TOKEN EXEC_PATH EXEC_ARGV...
 * Makes the calls (between close(MARK_BEGIN) and close(MARK_END)), writes the log to fd 3, then
 * execve(EXEC_PATH, EXEC_ARGV, environ). The guest agent runs
 *   ia32_int80 W T /opt/kmatrix/tools/ia32_musl ia32_musl W T /bin/busybox busybox true ia32-exec-T
 * so the int80 build execs the musl build (32 -> 32), which execs a 64-bit program (32 -> 64).
 *
 * Log (ASCII lines, parsed by harness/guest/ia32_log.py):
 *   call <source> <x86_64 name | unmapped> <i386 nr> <ret, signed decimal> <flags: - | exit64>
 *   arg <index> <hex u64>                  the x86_64 call's arguments (raw registers if unmapped)
 *   enter|exit <param> str <hex> | bytes [<hex>] | strv [<hex of NUL-joined>] | fd2 <a> <b> | fault
 * Every expected value is computed here from what was passed; nothing is looked up in a table.
 */
#ifndef KMX_INT80
#define _GNU_SOURCE
#include <errno.h>
#include <unistd.h>
#define SOURCE "musl"
#else
#define SOURCE "int80"
#endif

typedef unsigned long long u64;
typedef long long s64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

/* i386 syscall numbers (arch/x86/entry/syscalls/syscall_32.tbl, as unistd_32.h and the repository's
 * drivers/common/syscalls/x86.json list them). */
#define NR_read 3
#define NR_write 4
#define NR_open 5
#define NR_close 6
#define NR_unlink 10
#define NR_execve 11
#define NR_break 17       /* never implemented: no x86_64 equivalent */
#define NR_getpid 20
#define NR_nice 34        /* no x86_64 equivalent (x86_64 has only setpriority) */
#define NR_kill 37
#define NR_rename 38
#define NR_mkdir 39
#define NR_rmdir 40
#define NR_dup 41
#define NR_pipe 42
#define NR_dup2 63
#define NR_getppid 64
#define NR_old_mmap 90    /* "mmap": one pointer to six u32 */
#define NR_munmap 91
#define NR_socketcall 102
#define NR_ipc 117
#define NR__llseek 140
#define NR_pread64 180
#define NR_pwrite64 181
#define NR_mmap2 192
#define NR_ftruncate64 194
#define NR_stat64 195
#define NR_fstat64 197
#define NR_getuid32 199
#define NR_getgid32 200
#define NR_fcntl64 221
#define NR_gettid 224
#define NR_exit_group 252
#define NR_openat 295
#define NR_fstatat64 300
#define NR_clock_nanosleep_time64 407

/* socketcall and ipc call numbers (linux/net.h, linux/ipc.h) */
#define SYS_SOCKET 1
#define SYS_BIND 2
#define SYS_CONNECT 3
#define SYS_LISTEN 4
#define SYS_SEND 9
#define IPC_SEMOP 1
#define IPC_SEMGET 2
#define IPC_SEMCTL 3

/* Constants (i386 values) */
#define O_RDONLY 0
#define O_RDWR 2
#define O_CREAT 0100
#define SEEK_SET 0
#define F_GETFL 3
#define PROT_READ 1
#define PROT_WRITE 2
#define MAP_SHARED 1
#define MAP_PRIVATE 2
#define MAP_ANONYMOUS 0x20
#define AT_FDCWD (-100)
#define AF_INET 2
#define SOCK_STREAM 1
#define IPC_PRIVATE 0
#define IPC_CREAT 01000
#define IPC_RMID 0
#define CLOCK_MONOTONIC 1
#define EI_CLASS_32 1

#define MARK_BEGIN 0x4B4D5842
#define MARK_END 0x4B4D5845
#define LOG_FD 3
#define PAGE 4096

/* ---- syscalls ------------------------------------------------------------------------------ */

#ifdef KMX_INT80
/* ebp carries the 6th argument but may be gcc's frame pointer: push the value first (its operand
 * may be esp-relative), save ebp, load it from the stack, restore (as musl's __syscall6 does). */
static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	unsigned long ret;

	__asm__ __volatile__("pushl %7\n\t"
			     "pushl %%ebp\n\t"
			     "movl 4(%%esp), %%ebp\n\t"
			     "int $0x80\n\t"
			     "popl %%ebp\n\t"
			     "addl $4, %%esp"
			     : "=a"(ret)
			     : "a"(n), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e), "g"(f)
			     : "memory");
	return (long)ret;
}

/* gcc may emit calls to these even freestanding */
void *memset(void *dest, int c, __SIZE_TYPE__ n);
void *memcpy(void *dest, const void *src, __SIZE_TYPE__ n);

__attribute__((used)) void *memset(void *dest, int c, __SIZE_TYPE__ n)
{
	volatile u8 *p = dest;

	while (n--)
		*p++ = (u8)c;
	return dest;
}

__attribute__((used)) void *memcpy(void *dest, const void *src, __SIZE_TYPE__ n)
{
	volatile u8 *d = dest;
	const u8 *s = src;

	while (n--)
		*d++ = *s++;
	return dest;
}
#else
/* libc's syscall(): -1 and errno on failure, the kernel's -errno given back here. Every call passes
 * all six registers, so the registers of each call are known exactly. */
static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	long ret;

	errno = 0;
	ret = syscall(n, a, b, c, d, e, f);
	if (ret == -1 && errno)
		return -errno;
	return ret;
}
#endif

#define SYS0(n) sys6((n), 0, 0, 0, 0, 0, 0)
#define SYS1(n, a) sys6((n), (long)(a), 0, 0, 0, 0, 0)
#define SYS2(n, a, b) sys6((n), (long)(a), (long)(b), 0, 0, 0, 0)
#define SYS3(n, a, b, c) sys6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define SYS4(n, a, b, c, d) sys6((n), (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define SYS5(n, a, b, c, d, e) sys6((n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), 0)

/* A register value as the x86_64 call sees it: the 32 bits, zero-extended. */
#define Z(x) ((u64)(u32)(unsigned long)(x))
/* Two registers joined into one 64-bit value. */
#define PAIR(lo, hi) (Z(lo) | (Z(hi) << 32))

/* The kernel's return value as a 64-bit event reports it: -errno, else the 32-bit value
 * zero-extended (a mapping's address above 2 GiB is positive on x86_64). */
static s64 kret(long r)
{
	if (r < 0 && r >= -4095)
		return r;
	return (s64)Z(r);
}

/* ---- the log ------------------------------------------------------------------------------- */

#ifndef KMX_LOG_BYTES
#define KMX_LOG_BYTES 65536 /* both programs' logs together stay below a pipe's 64 KiB */
#endif
#define LOG_RESERVE 64       /* kept free for the overflow line */
static const char overflow_line[] = "\noverflow: the log buffer is full\n";
static char logbuf[KMX_LOG_BYTES];
static u32 loglen;
static int log_overflow;

static u32 slen(const char *s)
{
	u32 n = 0;

	while (s[n])
		n++;
	return n;
}

static void out(const char *s, u32 n)
{
	if (log_overflow || n > sizeof(logbuf) - LOG_RESERVE - loglen) {
		log_overflow = 1;
		return;
	}
	while (n--)
		logbuf[loglen++] = *s++;
}

static void outs(const char *s)
{
	out(s, slen(s));
}

static void outc(char c)
{
	out(&c, 1);
}

static const char hexdigits[] = "0123456789abcdef";

static void out_hex64(u64 v)
{
	char tmp[16];
	int n = 0;

	do {
		tmp[n++] = hexdigits[(u32)v & 15];
		v >>= 4;
	} while (v);
	while (n)
		outc(tmp[--n]);
}

/* Signed decimal without 64-bit division (the int80 build has no libgcc). */
static void out_dec(s64 v)
{
	static const u64 pow10[] = {
		10000000000000000000ULL, 1000000000000000000ULL, 100000000000000000ULL, 10000000000000000ULL,
		1000000000000000ULL, 100000000000000ULL, 10000000000000ULL, 1000000000000ULL,
		100000000000ULL, 10000000000ULL, 1000000000ULL, 100000000ULL, 10000000ULL, 1000000ULL,
		100000ULL, 10000ULL, 1000ULL, 100ULL, 10ULL, 1ULL,
	};
	u64 u = (u64)v;
	int i, started = 0;

	if (v < 0) {
		outc('-');
		u = (u64)0 - u;
	}
	for (i = 0; i < (int)(sizeof(pow10) / sizeof(pow10[0])); i++) {
		char digit = '0';

		while (u >= pow10[i]) {
			u -= pow10[i];
			digit++;
		}
		if (digit != '0' || started || i == (int)(sizeof(pow10) / sizeof(pow10[0])) - 1) {
			outc(digit);
			started = 1;
		}
	}
}

static void out_hexbytes(const void *p, u32 n)
{
	const u8 *b = p;
	u32 i;

	for (i = 0; i < n; i++) {
		outc(hexdigits[b[i] >> 4]);
		outc(hexdigits[b[i] & 15]);
	}
}

/* "call <source> <name> <i386 nr> <ret> <flags>" and "arg <i> <hex>" for the x86_64 call's
 * nargs arguments (the values as the driver must compute them). */
static void rec(const char *name, int nr32, s64 ret, const char *flags, int nargs, const u64 *args)
{
	int i;

	outs("call " SOURCE " ");
	outs(name);
	outc(' ');
	out_dec(nr32);
	outc(' ');
	out_dec(ret);
	outc(' ');
	outs(flags);
	outc('\n');
	for (i = 0; i < nargs; i++) {
		outs("arg ");
		out_dec(i);
		outc(' ');
		out_hex64(args[i]);
		outc('\n');
	}
}

/* REC(name, i386 nr, what the syscall returned, x86_64 args...); REC_RET with the 64-bit return
 * already worked out; REC0 for calls without arguments. */
#define REC_RET(name, nr32, ret, ...)                                                    \
	do {                                                                            \
		const u64 rec_args_[] = {__VA_ARGS__};                                  \
		rec((name), (nr32), (ret), "-", sizeof(rec_args_) / sizeof(u64), rec_args_); \
	} while (0)
#define REC(name, nr32, r, ...) REC_RET((name), (nr32), kret(r), __VA_ARGS__)
#define REC0(name, nr32, r) rec((name), (nr32), kret(r), "-", 0, 0)

static void param_head(const char *side, const char *param, const char *kind)
{
	outs(side);
	outc(' ');
	outs(param);
	outc(' ');
	outs(kind);
}

static void p_str(const char *side, const char *param, const char *s)
{
	param_head(side, param, "str");
	outc(' ');
	out_hexbytes(s, slen(s));
	outc('\n');
}

static void p_bytes(const char *side, const char *param, const void *p, long n)
{
	param_head(side, param, "bytes");
	if (n > 0) {
		outc(' ');
		out_hexbytes(p, (u32)n);
	}
	outc('\n');
}

static void p_fault(const char *side, const char *param)
{
	param_head(side, param, "fault");
	outc('\n');
}

static void p_fd2(const char *side, const char *param, const int *fds)
{
	param_head(side, param, "fd2");
	outc(' ');
	out_dec(fds[0]);
	outc(' ');
	out_dec(fds[1]);
	outc('\n');
}

/* the strings NUL-joined, without a trailing NUL */
static void p_strv(const char *side, const char *param, char *const *v)
{
	int i;

	param_head(side, param, "strv");
	if (v[0])
		outc(' ');
	for (i = 0; v[i]; i++) {
		if (i)
			outs("00");
		out_hexbytes(v[i], slen(v[i]));
	}
	outc('\n');
}

static void log_flush(void)
{
	u32 done = 0, i;

	if (log_overflow) /* a line the parser rejects, in the room kept for it */
		for (i = 0; i < sizeof(overflow_line) - 1; i++)
			logbuf[loglen++] = overflow_line[i];
	while (done < loglen) {
		long n = SYS3(NR_write, LOG_FD, logbuf + done, loglen - done);

		if (n <= 0)
			break;
		done += (u32)n;
	}
}

/* ---- helpers ------------------------------------------------------------------------------- */

static char *join(char *dst, const char *a, const char *b, const char *c, const char *d)
{
	const char *parts[4] = {a, b, c, d};
	char *p = dst;
	int i;

	for (i = 0; i < 4; i++) {
		const char *s = parts[i];

		while (s && *s)
			*p++ = *s++;
	}
	*p = 0;
	return dst;
}

static void put_be16(u8 *p, u16 v)
{
	p[0] = (u8)(v >> 8);
	p[1] = (u8)v;
}

/* ---- the calls ----------------------------------------------------------------------------- */

static char path[200], missing[200], dir[200], renamed[200];
static char data[96], data2[96], message[96];
static u8 rbuf[128], pbuf[128];
static u8 statbuf[256] __attribute__((aligned(8)));
static u8 sockaddr[16];
static u32 sockargs[6];
static u32 mmap_block[6];
static u8 sembuf[6];
static u32 zero_u32;
static s64 llseek_result;
static s64 ts64[2];
static int pipefds[2];

static void run(const char *workdir, const char *token)
{
	long fd, fd_ro, fd_dup, fd_dup2, server, client, semid, pid, addr, r;
	u32 n;
	int port;

	join(path, workdir, "/f-", token, "-" SOURCE);
	join(missing, workdir, "/missing-", token, "-" SOURCE);
	join(dir, workdir, "/d-", token, "-" SOURCE);
	join(renamed, dir, "/r-", token, 0);
	join(data, "ia32 write ", token, " " SOURCE "\n", 0);
	join(data2, "ia32 pwrite ", token, " " SOURCE, 0);
	join(message, "ia32 send ", token, " " SOURCE, 0);

	r = SYS1(NR_close, MARK_BEGIN);
	REC("close", NR_close, r, Z(MARK_BEGIN));

	/* files */
	fd = SYS3(NR_open, path, O_CREAT | O_RDWR, 0640);
	REC("open", NR_open, fd, Z(path), Z(O_CREAT | O_RDWR), Z(0640));
	p_str("enter", "path", path);

	r = SYS4(NR_openat, AT_FDCWD, missing, O_RDONLY, 0);
	REC("openat", NR_openat, r, Z(AT_FDCWD), Z(missing), Z(O_RDONLY), Z(0));
	p_str("enter", "path", missing);

	n = slen(data);
	r = SYS3(NR_write, fd, data, n);
	REC("write", NR_write, r, Z(fd), Z(data), Z(n));
	p_bytes("enter", "data", data, n);

	/* a bad user pointer: the driver reports the param as a fault */
	r = SYS3(NR_write, fd, 0x10, 5);
	REC("write", NR_write, r, Z(fd), Z(0x10), Z(5));
	p_fault("enter", "data");

	r = SYS3(NR_ftruncate64, fd, 3 * PAGE, 0);
	REC("ftruncate", NR_ftruncate64, r, Z(fd), PAIR(3 * PAGE, 0));

	/* _llseek(fd, hi, lo, &result, whence) is lseek(fd, hi << 32 | lo, whence); its return is the
	 * offset stored in result */
	llseek_result = -1;
	r = SYS5(NR__llseek, fd, 1, 10, &llseek_result, SEEK_SET);
	REC_RET("lseek", NR__llseek, r == 0 ? llseek_result : kret(r), Z(fd), PAIR(10, 1), Z(SEEK_SET));
	llseek_result = -1;
	r = SYS5(NR__llseek, fd, 0, 0, &llseek_result, SEEK_SET);
	REC_RET("lseek", NR__llseek, r == 0 ? llseek_result : kret(r), Z(fd), PAIR(0, 0), Z(SEEK_SET));

	r = SYS3(NR_read, fd, rbuf, n);
	REC("read", NR_read, r, Z(fd), Z(rbuf), Z(n));
	p_bytes("exit", "data", rbuf, r);

	n = slen(data2);
	r = sys6(NR_pwrite64, fd, (long)data2, n, PAGE, 0, 0);
	REC("pwrite64", NR_pwrite64, r, Z(fd), Z(data2), Z(n), PAIR(PAGE, 0));
	p_bytes("enter", "data", data2, n);

	r = sys6(NR_pread64, fd, (long)pbuf, n, PAGE, 0, 0);
	REC("pread64", NR_pread64, r, Z(fd), Z(pbuf), Z(n), PAIR(PAGE, 0));
	p_bytes("exit", "data", pbuf, r);

	r = SYS3(NR_fcntl64, fd, F_GETFL, 0);
	REC("fcntl", NR_fcntl64, r, Z(fd), Z(F_GETFL), Z(0));

	/* memory: mmap2's offset is in pages */
	addr = sys6(NR_mmap2, 0, PAGE, PROT_READ, MAP_SHARED, fd, 1);
	REC("mmap", NR_mmap2, addr, Z(0), Z(PAGE), Z(PROT_READ), Z(MAP_SHARED), Z(fd), Z(1) << 12);
	r = SYS2(NR_munmap, addr, PAGE);
	REC("munmap", NR_munmap, r, Z(addr), Z(PAGE));

	mmap_block[0] = 0;
	mmap_block[1] = PAGE;
	mmap_block[2] = PROT_READ | PROT_WRITE;
	mmap_block[3] = MAP_PRIVATE | MAP_ANONYMOUS;
	mmap_block[4] = (u32)-1;
	mmap_block[5] = 0;
	addr = SYS1(NR_old_mmap, mmap_block);
	REC("mmap", NR_old_mmap, addr, (u64)mmap_block[0], (u64)mmap_block[1], (u64)mmap_block[2],
	    (u64)mmap_block[3], (u64)mmap_block[4], (u64)mmap_block[5]);
	r = SYS2(NR_munmap, addr, PAGE);
	REC("munmap", NR_munmap, r, Z(addr), Z(PAGE));

	/* stat */
	r = SYS2(NR_stat64, path, statbuf);
	REC("stat", NR_stat64, r, Z(path), Z(statbuf));
	p_str("enter", "path", path);
	r = SYS2(NR_fstat64, fd, statbuf);
	REC("fstat", NR_fstat64, r, Z(fd), Z(statbuf));
	r = SYS4(NR_fstatat64, AT_FDCWD, path, statbuf, 0);
	REC("newfstatat", NR_fstatat64, r, Z(AT_FDCWD), Z(path), Z(statbuf), Z(0));
	p_str("enter", "path", path);

	fd_ro = SYS4(NR_openat, AT_FDCWD, path, O_RDONLY, 0);
	REC("openat", NR_openat, fd_ro, Z(AT_FDCWD), Z(path), Z(O_RDONLY), Z(0));
	p_str("enter", "path", path);

	/* ids */
	r = SYS0(NR_getuid32);
	REC0("getuid", NR_getuid32, r);
	r = SYS0(NR_getgid32);
	REC0("getgid", NR_getgid32, r);
	pid = SYS0(NR_getpid);
	REC0("getpid", NR_getpid, pid);
	r = SYS0(NR_getppid);
	REC0("getppid", NR_getppid, r);
	r = SYS0(NR_gettid);
	REC0("gettid", NR_gettid, r);

	/* descriptors */
	fd_dup = SYS1(NR_dup, fd);
	REC("dup", NR_dup, fd_dup, Z(fd));
	fd_dup2 = SYS2(NR_dup2, fd, 40);
	REC("dup2", NR_dup2, fd_dup2, Z(fd), Z(40));
	pipefds[0] = pipefds[1] = -1;
	r = SYS1(NR_pipe, pipefds);
	REC("pipe", NR_pipe, r, Z(pipefds));
	p_fd2("exit", "fds", pipefds);

	/* directories */
	r = SYS2(NR_mkdir, dir, 0750);
	REC("mkdir", NR_mkdir, r, Z(dir), Z(0750));
	p_str("enter", "path", dir);
	r = SYS2(NR_rename, path, renamed);
	REC("rename", NR_rename, r, Z(path), Z(renamed));
	p_str("enter", "oldpath", path);
	p_str("enter", "newpath", renamed);
	r = SYS1(NR_unlink, renamed);
	REC("unlink", NR_unlink, r, Z(renamed));
	p_str("enter", "path", renamed);
	r = SYS1(NR_rmdir, dir);
	REC("rmdir", NR_rmdir, r, Z(dir));

	/* sockets through socketcall(call, pointer to the u32 arguments) */
	port = 20000 + (int)((((u32)pid % 10000) * 2 + (SOURCE[0] == 'm')) % 20000);
	sockaddr[0] = AF_INET; /* sa_family, little-endian u16 */
	sockaddr[1] = 0;
	put_be16(sockaddr + 2, (u16)port);
	sockaddr[4] = 127;
	sockaddr[5] = 0;
	sockaddr[6] = 0;
	sockaddr[7] = 1;

	sockargs[0] = AF_INET;
	sockargs[1] = SOCK_STREAM;
	sockargs[2] = 0;
	server = SYS2(NR_socketcall, SYS_SOCKET, sockargs);
	REC("socket", NR_socketcall, server, (u64)sockargs[0], (u64)sockargs[1], (u64)sockargs[2]);

	sockargs[0] = (u32)server;
	sockargs[1] = (u32)(unsigned long)sockaddr;
	sockargs[2] = sizeof(sockaddr);
	r = SYS2(NR_socketcall, SYS_BIND, sockargs);
	REC("bind", NR_socketcall, r, (u64)sockargs[0], (u64)sockargs[1], (u64)sockargs[2]);
	p_bytes("enter", "addr", sockaddr, sizeof(sockaddr));

	sockargs[0] = (u32)server;
	sockargs[1] = 4;
	r = SYS2(NR_socketcall, SYS_LISTEN, sockargs);
	REC("listen", NR_socketcall, r, (u64)sockargs[0], (u64)sockargs[1]);

	sockargs[0] = AF_INET;
	sockargs[1] = SOCK_STREAM;
	sockargs[2] = 0;
	client = SYS2(NR_socketcall, SYS_SOCKET, sockargs);
	REC("socket", NR_socketcall, client, (u64)sockargs[0], (u64)sockargs[1], (u64)sockargs[2]);

	sockargs[0] = (u32)client;
	sockargs[1] = (u32)(unsigned long)sockaddr;
	sockargs[2] = sizeof(sockaddr);
	r = SYS2(NR_socketcall, SYS_CONNECT, sockargs);
	REC("connect", NR_socketcall, r, (u64)sockargs[0], (u64)sockargs[1], (u64)sockargs[2]);
	p_bytes("enter", "addr", sockaddr, sizeof(sockaddr));

	/* send(fd, buf, len, flags) is sendto(fd, buf, len, flags, NULL, 0) */
	n = slen(message);
	sockargs[0] = (u32)client;
	sockargs[1] = (u32)(unsigned long)message;
	sockargs[2] = n;
	sockargs[3] = 0;
	r = SYS2(NR_socketcall, SYS_SEND, sockargs);
	REC("sendto", NR_socketcall, r, (u64)sockargs[0], (u64)sockargs[1], (u64)sockargs[2], (u64)sockargs[3], 0,
	    0);
	p_bytes("enter", "data", message, n);
	p_bytes("enter", "addr", 0, 0);

	/* System V semaphores through ipc(call, first, second, third, ptr, fifth) */
	semid = sys6(NR_ipc, IPC_SEMGET, IPC_PRIVATE, 1, IPC_CREAT | 0600, 0, 0);
	REC("semget", NR_ipc, semid, Z(IPC_PRIVATE), Z(1), Z(IPC_CREAT | 0600));
	sembuf[0] = 0; /* sem_num 0, sem_op 1, sem_flg 0 (u16, s16, s16) */
	sembuf[1] = 0;
	sembuf[2] = 1;
	sembuf[3] = 0;
	sembuf[4] = 0;
	sembuf[5] = 0;
	r = sys6(NR_ipc, IPC_SEMOP, semid, 1, 0, (long)sembuf, 0);
	REC("semop", NR_ipc, r, Z(semid), Z(sembuf), Z(1));
	zero_u32 = 0;
	r = sys6(NR_ipc, IPC_SEMCTL, semid, 0, IPC_RMID, (long)&zero_u32, 0);
	REC("semctl", NR_ipc, r, Z(semid), Z(0), Z(IPC_RMID), (u64)zero_u32);

	/* time: the 64-bit timespec */
	ts64[0] = 0;
	ts64[1] = 1000000;
	r = SYS4(NR_clock_nanosleep_time64, CLOCK_MONOTONIC, 0, ts64, 0);
	REC("clock_nanosleep", NR_clock_nanosleep_time64, r, Z(CLOCK_MONOTONIC), Z(0), Z(ts64), Z(0));
	p_bytes("enter", "req", ts64, sizeof(ts64));

	r = SYS2(NR_kill, pid, 0);
	REC("kill", NR_kill, r, Z(pid), Z(0));

	/* no x86_64 equivalent: the raw registers (all six are set, to known values) */
	r = sys6(NR_break, (long)0xfffffff1, 2, 3, 4, 5, (long)0x80000006);
	REC("unmapped", NR_break, r, Z(0xfffffff1), Z(2), Z(3), Z(4), Z(5), Z(0x80000006));
	r = sys6(NR_nice, 0, 0x4b4d0002, 0, 0, 0, 0);
	REC("unmapped", NR_nice, r, Z(0), Z(0x4b4d0002), Z(0), Z(0), Z(0), Z(0));

	/* close everything opened */
	r = SYS1(NR_close, pipefds[0]);
	REC("close", NR_close, r, Z(pipefds[0]));
	r = SYS1(NR_close, pipefds[1]);
	REC("close", NR_close, r, Z(pipefds[1]));
	r = SYS1(NR_close, client);
	REC("close", NR_close, r, Z(client));
	r = SYS1(NR_close, server);
	REC("close", NR_close, r, Z(server));
	r = SYS1(NR_close, fd_dup2);
	REC("close", NR_close, r, Z(fd_dup2));
	r = SYS1(NR_close, fd_dup);
	REC("close", NR_close, r, Z(fd_dup));
	r = SYS1(NR_close, fd_ro);
	REC("close", NR_close, r, Z(fd_ro));
	r = SYS1(NR_close, fd);
	REC("close", NR_close, r, Z(fd));

	r = SYS1(NR_close, MARK_END);
	REC("close", NR_close, r, Z(MARK_END));
}

/* 1 when the program at path is a 32-bit ELF (its execve's exit is then an IA32 event); made after
 * the end marker, so these calls are outside the marked sequence and not recorded. */
static int is_elf32(const char *file)
{
	u8 ident[5] = {0, 0, 0, 0, 0};
	long fd = SYS3(NR_open, file, O_RDONLY, 0);

	if (fd < 0)
		return 0;
	SYS3(NR_read, fd, ident, sizeof(ident));
	SYS1(NR_close, fd);
	return ident[0] == 0x7f && ident[1] == 'E' && ident[2] == 'L' && ident[3] == 'F' && ident[4] == EI_CLASS_32;
}

static void usage(void)
{
	static const char text[] = "usage: ia32_calls WORKDIR TOKEN EXEC_PATH EXEC_ARGV...\n";

	SYS3(NR_write, 2, text, sizeof(text) - 1);
	SYS1(NR_exit_group, 2);
}

static int start(int argc, char **argv, char **envp)
{
	char *const *exec_argv;
	u64 args[3];
	long r;

	if (argc < 5)
		usage();
	exec_argv = argv + 4;
	SYS2(NR_mkdir, argv[1], 0755); /* before the begin marker: not recorded */
	run(argv[1], argv[2]);

	/* the execve, recorded before it happens: it returns 0 to the new program */
	args[0] = Z(argv[3]);
	args[1] = Z(exec_argv);
	args[2] = Z(envp);
	rec("execve", NR_execve, 0, is_elf32(argv[3]) ? "-" : "exit64", 3, args);
	p_str("enter", "filename", argv[3]);
	p_strv("enter", "argv", exec_argv);
	log_flush();
	r = SYS3(NR_execve, argv[3], exec_argv, envp);
	SYS1(NR_exit_group, 127);
	return (int)r;
}

#ifdef KMX_INT80
/* The kernel's initial stack: argc, argv[argc + 1], envp[]. Align it for the call (i386 gcc
 * assumes 16 bytes at every call) and pass a pointer to argc. */
__asm__(".text\n"
	".globl _start\n"
	".type _start, @function\n"
	"_start:\n"
	"	xorl %ebp, %ebp\n"
	"	movl %esp, %eax\n"
	"	andl $-16, %esp\n"
	"	subl $12, %esp\n"
	"	pushl %eax\n"
	"	call kmx_start\n"
	"	hlt\n");

__attribute__((used, noreturn)) void kmx_start(long *sp);

__attribute__((used, noreturn)) void kmx_start(long *sp)
{
	int argc = (int)sp[0];
	char **argv = (char **)(sp + 1);

	SYS1(NR_exit_group, start(argc, argv, argv + argc + 1));
	for (;;)
		;
}
#else
int main(int argc, char **argv, char **envp)
{
	return start(argc, argv, envp);
}
#endif
