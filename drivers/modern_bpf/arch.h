/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Every architecture difference the modern probe cares about, in one place (like the kernel
 * module's compat.h). All reads go through CO-RE (BPF_CORE_READ): field offsets come from the
 * running kernel's BTF at load time, so one object per architecture serves every kernel.
 *
 * __TARGET_ARCH_<x86|arm64|s390|powerpc|riscv|loongarch> selects the architecture (libbpf's
 * bpf_tracing.h uses the same macro for PT_REGS_PARMn_CORE_SYSCALL).
 */
#ifndef KMX_MODERN_ARCH_H
#define KMX_MODERN_ARCH_H

/*
 * A compat (32-bit ABI) syscall of a 64-bit kernel: the kernel module's in_compat_syscall().
 * Its numbers are not the native table's, so such events carry id 0 and no decoded params.
 *   x86_64: in_ia32_syscall(): thread_info.status & TS_COMPAT (0x0002, unchanged since 4.x).
 *   arm64:  is_compat_task(): thread_info.flags bit TIF_32BIT (22).
 * s390x, ppc64le and riscv64 guests run no 32-bit userland (Debian builds them without one):
 * native only, as the module sees them there.
 */
#define KMX_X86_TS_COMPAT 0x0002
#define KMX_ARM64_TIF_32BIT 22

static __always_inline bool kmx_compat_syscall(void)
{
#if defined(__TARGET_ARCH_x86)
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	if (!bpf_core_field_exists(task->thread_info.status))
		return false;
	return BPF_CORE_READ(task, thread_info.status) & KMX_X86_TS_COMPAT;
#elif defined(__TARGET_ARCH_arm64)
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	return (BPF_CORE_READ(task, thread_info.flags) >> KMX_ARM64_TIF_32BIT) & 1;
#else
	return false;
#endif
}

/*
 * IA32 tasks on x86_64: their i386 syscalls are translated to the x86_64 ones
 * (kmx_ia32.h, included by the probe when KMX_IA32 is defined). The tables go in their own
 * read-only section: .rodata itself holds only the loader's configuration.
 */
#if defined(__TARGET_ARCH_x86)
#define KMX_IA32 1
#define KMX_IA32_READ_USER(dst, size, uaddr) bpf_probe_read_user((dst), (size), (const void *)(uaddr))
#define KMX_IA32_RODATA SEC(".rodata.kmx_ia32")
#endif

/*
 * The syscall's six arguments, at entry and at exit: what syscall_get_arguments() gives the
 * kernel module. The first one is the saved original where the register is reused for the
 * return value (orig_x0 on arm64, orig_gpr2 on s390, orig_gpr3 on powerpc, orig_a0 on riscv):
 * libbpf's PT_REGS_PARMn_CORE_SYSCALL read those. x86 compat calls take theirs from bx, cx, dx,
 * si, di, bp like syscall_get_arguments() does for TS_COMPAT tasks.
 */
static __always_inline void kmx_get_args(struct pt_regs *regs, __u64 *args, bool compat)
{
#if defined(__TARGET_ARCH_x86)
	if (compat) {
		args[0] = BPF_CORE_READ(regs, bx);
		args[1] = BPF_CORE_READ(regs, cx);
		args[2] = BPF_CORE_READ(regs, dx);
		args[3] = BPF_CORE_READ(regs, si);
		args[4] = BPF_CORE_READ(regs, di);
		args[5] = BPF_CORE_READ(regs, bp);
		return;
	}
#endif
	args[0] = PT_REGS_PARM1_CORE_SYSCALL(regs);
	args[1] = PT_REGS_PARM2_CORE_SYSCALL(regs);
	args[2] = PT_REGS_PARM3_CORE_SYSCALL(regs);
	args[3] = PT_REGS_PARM4_CORE_SYSCALL(regs);
	args[4] = PT_REGS_PARM5_CORE_SYSCALL(regs);
	args[5] = PT_REGS_PARM6_CORE_SYSCALL(regs);
}

/* The syscall number at sys_exit, as syscall_get_nr() reads it (sys_enter gets it as an argument). */
static __always_inline long kmx_exit_nr(struct pt_regs *regs)
{
#if defined(__TARGET_ARCH_x86)
	return (long)BPF_CORE_READ(regs, orig_ax);
#elif defined(__TARGET_ARCH_arm64)
	return (long)BPF_CORE_READ(regs, syscallno);
#elif defined(__TARGET_ARCH_s390)
	return (long)(BPF_CORE_READ(regs, int_code) & 0xffff);
#elif defined(__TARGET_ARCH_powerpc)
	return (long)BPF_CORE_READ(regs, gpr[0]);
#elif defined(__TARGET_ARCH_riscv)
	return (long)BPF_CORE_READ(regs, a7);
#elif defined(__TARGET_ARCH_loongarch)
	return (long)BPF_CORE_READ(regs, regs[11]);
#else
#error "unsupported __TARGET_ARCH"
#endif
}

#endif /* KMX_MODERN_ARCH_H */
