/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The few BPF helpers, section and map-definition macros the legacy probe uses, declared against
 * the target kernel's own <uapi/linux/bpf.h> (the BPF_FUNC_* and BPF_MAP_TYPE_* it knows), the
 * way legacy probes are built. No libbpf headers: libbpf only loads the object.
 *
 * Maps are BTF-defined (libbpf 1.x reads nothing else): the .BTF the compiler emits from -g
 * describes them.
 */
#ifndef KMX_BPF_DEFS_H
#define KMX_BPF_DEFS_H

#include <linux/types.h>
#include <uapi/linux/bpf.h>

#define KMX_SEC(name) __attribute__((section(name), used))

#define __kmx_uint(name, val) int (*name)[val]
#define __kmx_type(name, val) typeof(val) *name

/* Helpers by number: a call through a constant address is a BPF helper call. */
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_probe_read_kernel)(void *dst, __u32 size, const void *unsafe_ptr) =
	(void *)BPF_FUNC_probe_read_kernel;
static long (*bpf_probe_read_user)(void *dst, __u32 size, const void *unsafe_ptr) =
	(void *)BPF_FUNC_probe_read_user;
static long (*bpf_probe_read_user_str)(void *dst, __u32 size, const void *unsafe_ptr) =
	(void *)BPF_FUNC_probe_read_user_str;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)BPF_FUNC_ktime_get_ns;
static __u64 (*bpf_get_current_pid_tgid)(void) = (void *)BPF_FUNC_get_current_pid_tgid;
static __u64 (*bpf_get_current_task)(void) = (void *)BPF_FUNC_get_current_task;
static __u64 (*bpf_get_current_cgroup_id)(void) = (void *)BPF_FUNC_get_current_cgroup_id; /* 4.18 */
static long (*bpf_perf_event_output)(void *ctx, void *map, __u64 flags, void *data, __u64 size) =
	(void *)BPF_FUNC_perf_event_output;

/*
 * The verifier tracks exact values in registers but not in map memory: reading a value back
 * from the per-CPU state turns "one of 45 constants" into "some number in range", so the paths
 * that computed different constants merge instead of being verified one by one. volatile keeps
 * the compiler from forwarding the stored value.
 */
#define KMX_RELOAD(lvalue) (*(volatile typeof(lvalue) *)&(lvalue))

/* A compiler barrier that also hides a register's origin from the optimizer. */
#define KMX_OPAQUE(var) asm volatile("" : "+r"(var))

/*
 * var &= mask, kept: when the compiler can prove the mask changes nothing (a length already
 * clamped to the snapshot length) it drops it, and the verifier, which cannot always follow that
 * proof, is left with an unbounded register. Hiding the value first keeps the AND, on the very
 * register that is used next.
 */
#define KMX_BOUND(var, mask) \
	do { \
		KMX_OPAQUE(var); \
		(var) &= (mask); \
	} while (0)

#endif /* KMX_BPF_DEFS_H */
