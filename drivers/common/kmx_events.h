/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * kmatrix event schema: the one definition shared by the kernel module, the legacy and modern
 * BPF probes, and the harness's decoder (harness/guest/schema.py reads the KMX_ defines and the
 * KMX_DECODED table below from this file; keep each define on one line).
 *
 * Every event is, in the target's native byte order:
 *
 *   struct kmx_event_hdr    32 bytes, packed
 *   __u16 param_len[nparams]
 *   params, back to back:  each is  __u8 type (KMX_PT_*), __u8 flags (KMX_PF_*), payload
 *                          (param_len counts the two leading bytes too)
 *   padding to a multiple of 8 (hdr.len includes it)
 *
 * Params of a KMX_EVT_SYS_ENTER event:  nr (U64), id (U64), a0..a5 (U64 raw arguments), then the
 *   decoded enter params that KMX_DECODED lists for the syscall.
 * Params of a KMX_EVT_SYS_EXIT event:   nr (U64), id (U64), ret (S64), then the decoded exit params.
 * `nr` is the native syscall number as the sys_enter tracepoint saw it; `id` is the KMX_SC_* id
 * (0 for syscalls the drivers do not decode).
 *
 * IA32 events (x86_64 only): a 32-bit task's syscall is translated to its x86_64 equivalent
 * (kmx_ia32.h): hdr.type has KMX_EVT_F_IA32 set, nr/id/a0..a5 are the x86_64 call's (arguments
 * read from the i386 registers, 32-bit values zero-extended, split 64-bit values joined,
 * socketcall/ipc demultiplexed), and one more fixed param follows the fixed ones: ia32_nr (U64),
 * the i386 number the tracepoint saw. Decoded params follow it, for the x86_64 syscall, with
 * 32-bit user pointers (argv entries are 4 bytes). An i386 number with no x86_64 equivalent has
 * nr KMX_NR_IA32_UNMAPPED, id 0 and the raw registers as a0..a5. The exit of an execve belongs to
 * the new program: 32 -> 64 exits as a native event, 64 -> 32 as an IA32 one.
 */
#ifndef KMX_EVENTS_H
#define KMX_EVENTS_H

#include <linux/types.h>

#define KMX_SCHEMA_VERSION 3

/*
 * Container attribution travels in every header: the task's cgroup on the default (v2) hierarchy
 * by id, which on 64-bit kernels is the inode number of its directory under a cgroup2 mount (the
 * agent maps it to the path, and the path to a container), and the inode number of its active
 * pid namespace (/proc/PID/ns/pid). Either is 0 where the driver cannot read it on that kernel.
 */
struct kmx_event_hdr {
	__u64 ts_ns;    /* CLOCK_MONOTONIC nanoseconds (ktime_get_ns, bpf_ktime_get_ns) */
	__u64 tid;      /* thread id (kernel pid) */
	__u64 pid;      /* thread group id (user-visible pid) */
	__u32 len;      /* whole event: header, lengths, params, padding */
	__u16 type;     /* KMX_EVT_* */
	__u16 nparams;
	__u64 cgroup_id; /* cgroup v2 id (kernfs node id) of the task, 0: unknown */
	__u32 pidns;    /* inode number of the task's active pid namespace, 0: unknown */
	__u32 reserved; /* 0 */
} __attribute__((packed));

#define KMX_HDR_SIZE 48
/* struct module format of the header for decoders (native byte order): */
#define KMX_HDR_FORMAT "QQQIHHQII"
#define KMX_ALIGN 8

/* Event types */
#define KMX_EVT_PAD 0          /* rest of the buffer up to its end is unused; continue at offset 0 */
#define KMX_EVT_SYS_ENTER 1
#define KMX_EVT_SYS_EXIT 2
#define KMX_EVT_KIND_MASK 255  /* hdr.type & this is the kind; the bits above are flags */
#define KMX_EVT_F_IA32 256     /* an IA32 (32-bit compat) syscall, translated: see above */

/* Param types */
#define KMX_PT_U64 1
#define KMX_PT_S64 2
#define KMX_PT_STR 3           /* string copied from user memory, without its NUL */
#define KMX_PT_BYTES 4         /* buffer copied from user memory */
#define KMX_PT_SOCKADDR 5      /* struct sockaddr as in user memory (family first, native order) */
#define KMX_PT_STRV 6          /* NULL-terminated string array (argv): strings joined by NUL */
#define KMX_PT_FD2 7           /* two __s32 file descriptors (pipe2) */

/* Param flags */
#define KMX_PF_FAULT 1         /* copy from user memory failed: payload empty */
#define KMX_PF_TRUNC 2         /* cut at the snapshot length */
#define KMX_PF_REDACTED 4      /* a secret's value in it was replaced by '*' (redaction on) */

/*
 * Redaction (off by default, set at load): in the buffers a syscall writes out (BYTES params taken
 * with their length argument on enter: write, pwrite64 and sendto data), the value after each key
 * is replaced by '*' up to the next delimiter or the end of what was captured, before the event
 * reaches the buffer. Work is bounded: with redaction on such a buffer is captured up to
 * KMX_REDACT_SCAN bytes at most (the snapshot length still applies), and scanned once, byte by
 * byte, matching up to KMX_REDACT_KEYS_MAX keys of at most KMX_REDACT_KEY_MAX bytes each. A key
 * is matched with a running prefix count, so a key that repeats its own prefix (like "aab") can
 * miss an occurrence that overlaps a false start. harness/guest/redaction.py is the reference.
 */
#define KMX_REDACT_SCAN 256
#define KMX_REDACT_KEYS_MAX 4
#define KMX_REDACT_KEY_MAX 16
#define KMX_REDACT_DEFAULT_KEYS "password=,secret=,token="
/* A value ends at: space, tab, CR, LF, NUL, & ; , " ' (kmx_redact_delimiter() in each driver). */

/* Fixed params before the decoded ones */
#define KMX_ENTER_FIXED 8      /* nr, id, a0..a5 */
#define KMX_EXIT_FIXED 3       /* nr, id, ret */
#define KMX_IA32_EXTRA_FIXED 1 /* IA32 events: ia32_nr after the fixed params */
#define KMX_NR_IA32_UNMAPPED_VALUE 18446744073709551615 /* nr of an unmapped IA32 event: (__u64)-1 */

/* Snapshot length bounds (bytes copied per buffer or string) */
#define KMX_SNAPLEN_DEFAULT 256
#define KMX_SNAPLEN_MAX 4096
#define KMX_STRV_MAX_ARGS 16

/*
 * Syscalls the drivers decode: KMX_DECODED(X) calls X(id, name, "enter params", "exit params");
 * each param is name:TYPE:source, source being argN (the Nth argument), argN/lenM (buffer at
 * argN of length argM), argN/ret (buffer at argN of length ret, empty when ret <= 0), argN/16 (a
 * fixed 16 bytes), or argN/ *lenM (written without the space: length read from the int at argM,
 * at exit). STRV strings are joined by NUL with no trailing NUL; more than KMX_STRV_MAX_ARGS
 * strings, or more than the snapshot length, sets KMX_PF_TRUNC. Exit params are decoded even
 * when the call failed (the buffer as left, or KMX_PF_FAULT). IA32 calls are decoded as the x86_64
 * syscall they translate to; other compat ABIs (arm64's aarch32, ...) carry id 0.
 * Names are the generic (asm-generic) names; arch tables map them to numbers.
 * The consumer publishes its tail with a plain store after it has finished reading the events
 * (a release store where the language offers one); the producer reads it with smp_load_acquire.
 */
#define KMX_DECODED(X) \
	X(1, openat, "path:STR:arg1", "") \
	X(2, read, "", "data:BYTES:arg1/ret") \
	X(3, write, "data:BYTES:arg1/len2", "") \
	X(4, pread64, "", "data:BYTES:arg1/ret") \
	X(5, pwrite64, "data:BYTES:arg1/len2", "") \
	X(6, lseek, "", "") \
	X(7, close, "", "") \
	X(8, dup, "", "") \
	X(9, dup3, "", "") \
	X(10, pipe2, "", "fds:FD2:arg0") \
	X(11, fstat, "", "") \
	X(12, newfstatat, "path:STR:arg1", "") \
	X(13, mkdirat, "path:STR:arg1", "") \
	X(14, unlinkat, "path:STR:arg1", "") \
	X(15, renameat2, "oldpath:STR:arg1 newpath:STR:arg3", "") \
	X(16, renameat, "oldpath:STR:arg1 newpath:STR:arg3", "") \
	X(17, getpid, "", "") \
	X(18, getppid, "", "") \
	X(19, gettid, "", "") \
	X(20, clone, "", "") \
	X(21, wait4, "", "") \
	X(22, execve, "filename:STR:arg0 argv:STRV:arg1", "") \
	X(23, socket, "", "") \
	X(24, bind, "addr:SOCKADDR:arg1/len2", "") \
	X(25, listen, "", "") \
	X(26, connect, "addr:SOCKADDR:arg1/len2", "") \
	X(27, accept4, "", "addr:SOCKADDR:arg1/*len2") \
	X(28, sendto, "data:BYTES:arg1/len2 addr:SOCKADDR:arg4/len5", "") \
	X(29, recvfrom, "", "data:BYTES:arg1/ret") \
	X(30, mmap, "", "") \
	X(31, munmap, "", "") \
	X(32, nanosleep, "req:BYTES:arg0/16", "") \
	X(33, kill, "", "") \
	X(34, fork, "", "") \
	X(35, vfork, "", "") \
	X(36, clone3, "", "") \
	X(37, open, "path:STR:arg0", "") \
	X(38, dup2, "", "") \
	X(39, pipe, "", "fds:FD2:arg0") \
	X(40, mkdir, "path:STR:arg0", "") \
	X(41, unlink, "path:STR:arg0", "") \
	X(42, rename, "oldpath:STR:arg0 newpath:STR:arg1", "") \
	X(43, accept, "", "addr:SOCKADDR:arg1/*len2") \
	X(44, stat, "path:STR:arg0", "") \
	X(45, clock_nanosleep, "req:BYTES:arg2/16", "")

#define KMX_SC_MAX 46

/* Character device and its ioctls (see kmod); magic 'k' */
#define KMX_DEVICE_NAME "kmx"
#define KMX_IOCTL_MAGIC 107
#define KMX_IOCTL_START 1      /* _IO */
#define KMX_IOCTL_STOP 2       /* _IO */
#define KMX_IOCTL_SET_SNAPLEN 3 /* _IOW  __u32 */
#define KMX_IOCTL_GET_INFO 4   /* _IOR  struct kmx_info */
#define KMX_IOCTL_GET_STATS 5  /* _IOWR struct kmx_cpu_stats (cpu filled in by the caller) */
#define KMX_IOCTL_SET_FILTER_TGID 6 /* _IOW __u64: 0 captures every process */
#define KMX_IOCTL_SET_SAMPLING 7 /* _IOW __u32 N: keep 1 in N syscalls (enter and exit together); 0, 1: all */
#define KMX_IOCTL_SET_TAIL 8   /* _IOW struct kmx_tail: a consumer with a read-only mapping gives space back */

/*
 * Who may open /dev/kmx: the module's device_gid and device_mode parameters (default root:root
 * 0640). A member of that group opens it read-only, maps the buffers read-only and publishes its
 * tail with SET_TAIL; root (or any writer) may map read-write and store the tail itself.
 */
struct kmx_tail {
	__u32 cpu;
	__u32 reserved;        /* 0 */
	__u64 tail;            /* next read offset in the CPU's data area (a multiple of KMX_ALIGN) */
};

struct kmx_info {
	__u32 schema_version;
	__u32 ncpus;           /* number of possible CPUs = number of buffers */
	__u64 buffer_bytes;    /* data area per CPU */
	__u64 map_stride;      /* mmap offset of CPU n's buffer is n * map_stride */
	__u32 snaplen;
	__u32 capturing;
};

struct kmx_cpu_stats {
	__u32 cpu;
	__u32 online;
	__u64 events;          /* events written */
	__u64 drops;           /* events dropped: buffer full */
	__u64 bytes;           /* bytes written */
};

/* First page of each CPU's mapping; the data area follows at offset KMX_CTRL_SIZE. */
struct kmx_ring_ctrl {
	__u64 head;            /* written by the producer: next write offset in the data area */
	__u64 tail;            /* written by the consumer: next read offset */
	__u64 size;            /* data area bytes */
	__u64 events;
	__u64 drops;
	__u64 bytes;
};

#define KMX_CTRL_SIZE 4096

#endif /* KMX_EVENTS_H */
