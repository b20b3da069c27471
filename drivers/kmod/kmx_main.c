// SPDX-License-Identifier: GPL-2.0
/*
 * kmx: syscall capture through the raw_syscalls tracepoints into per-CPU mmap'd ring buffers.
 *
 * This file: module parameters, the per-CPU buffers, and the /dev/kmx misc device (mmap of a
 * CPU's buffer, ioctls). kmx_probe.c: the tracepoint probes that write events.
 * The event format, the buffer layout and the ioctls are drivers/common/kmx_events.h.
 */
#include <linux/cdev.h>
#include <linux/cpumask.h>
#include <linux/device.h>
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>

#include "compat.h"
#include "kmx.h"

#define KMX_IOC_START _IO(KMX_IOCTL_MAGIC, KMX_IOCTL_START)
#define KMX_IOC_STOP _IO(KMX_IOCTL_MAGIC, KMX_IOCTL_STOP)
#define KMX_IOC_SET_SNAPLEN _IOW(KMX_IOCTL_MAGIC, KMX_IOCTL_SET_SNAPLEN, __u32)
#define KMX_IOC_GET_INFO _IOR(KMX_IOCTL_MAGIC, KMX_IOCTL_GET_INFO, struct kmx_info)
#define KMX_IOC_GET_STATS _IOWR(KMX_IOCTL_MAGIC, KMX_IOCTL_GET_STATS, struct kmx_cpu_stats)
#define KMX_IOC_SET_FILTER_TGID _IOW(KMX_IOCTL_MAGIC, KMX_IOCTL_SET_FILTER_TGID, __u64)
#define KMX_IOC_SET_SAMPLING _IOW(KMX_IOCTL_MAGIC, KMX_IOCTL_SET_SAMPLING, __u32)
#define KMX_IOC_SET_TAIL _IOW(KMX_IOCTL_MAGIC, KMX_IOCTL_SET_TAIL, struct kmx_tail)

#define KMX_MIN_BUFFER (64UL << 10)
#define KMX_MAX_BUFFER (1UL << 30)

static unsigned long buffer_bytes = 8UL << 20;
module_param(buffer_bytes, ulong, 0444);
MODULE_PARM_DESC(buffer_bytes, "data area per CPU in bytes (rounded up to the page size; default 8 MiB)");

static unsigned int snaplen = KMX_SNAPLEN_DEFAULT;
module_param(snaplen, uint, 0444);
MODULE_PARM_DESC(snaplen, "bytes copied per buffer or string (1..4096; the SET_SNAPLEN ioctl changes it)");

static unsigned int device_gid;
module_param(device_gid, uint, 0444);
MODULE_PARM_DESC(device_gid, "group owning /dev/kmx (default 0, root); its members open it read-only");

static unsigned int device_mode = 0640;
module_param(device_mode, uint, 0444);
MODULE_PARM_DESC(device_mode, "permission bits of /dev/kmx (default 0640: root reads and writes, the group reads)");

static bool redact;
module_param(redact, bool, 0444);
MODULE_PARM_DESC(redact, "replace secrets' values in written and sent buffers by '*' before they are captured (default off)");

static char *redact_keys = KMX_REDACT_DEFAULT_KEYS;
module_param(redact_keys, charp, 0444);
MODULE_PARM_DESC(redact_keys, "with redact=1: the keys whose values are secrets, comma-separated (1 to 4 keys of 1 to 16 bytes; "
		 "default " KMX_REDACT_DEFAULT_KEYS ")");

struct kmx_redact_keys kmx_redact;

/* redact_keys into kmx_redact (its n stays 0, redaction off, unless redact is set). */
static int kmx_parse_redact_keys(void)
{
	const char *start = redact_keys;
	u32 n = 0;

	memset(&kmx_redact, 0, sizeof(kmx_redact));
	if (!redact)
		return 0;
	for (;;) {
		const char *end = strchrnul(start, ',');
		size_t len = end - start;

		if (!len || len > KMX_REDACT_KEY_MAX || n == KMX_REDACT_KEYS_MAX) {
			pr_err("kmx: redact_keys=%s: 1 to %d comma-separated keys of 1 to %d bytes\n", redact_keys,
			       KMX_REDACT_KEYS_MAX, KMX_REDACT_KEY_MAX);
			return -EINVAL;
		}
		memcpy(kmx_redact.key[n], start, len);
		kmx_redact.len[n++] = len;
		if (!*end)
			break;
		start = end + 1;
	}
	kmx_redact.n = n;
	return 0;
}

static unsigned int sample_every = 1;
module_param(sample_every, uint, 0444);
MODULE_PARM_DESC(sample_every, "keep 1 in N syscalls, enter and exit together (0, 1: all; the SET_SAMPLING ioctl changes it)");

struct kmx_cpu_buf __percpu *kmx_bufs;
u32 kmx_sample_every;
u64 kmx_size;
u32 kmx_snaplen_now;
u64 kmx_filter_tgid;
bool kmx_capturing;

static u64 kmx_stride;
static DEFINE_MUTEX(kmx_lock);

/*
 * Open files of /dev/kmx (mappings hold theirs). A plain rmmod cannot run while one is open (each
 * holds a module reference), but a forced one (rmmod -f, CONFIG_MODULE_FORCE_UNLOAD) can: then
 * kmx_exit() waits for them to close before freeing anything their ioctls, mappings or release
 * still reach, and ioctls fail with ENODEV meanwhile. A consumer sees the module "going" in
 * /sys/module/kmx/initstate and should close.
 */
static atomic_t kmx_open_files = ATOMIC_INIT(0);
static DECLARE_WAIT_QUEUE_HEAD(kmx_all_closed);
static bool kmx_going;

static u32 kmx_clamp_snaplen(u64 value)
{
	return (u32)clamp_t(u64, value, 1, KMX_SNAPLEN_MAX);
}

/* Empty every ring and zero its counters; only while no probe writes (capturing off, synced). */
static void kmx_reset_rings(void)
{
	int cpu;

	for_each_possible_cpu(cpu) {
		struct kmx_cpu_buf *buf = per_cpu_ptr(kmx_bufs, cpu);

		buf->head = 0;
		buf->events = 0;
		buf->drops = 0;
		buf->bytes = 0;
		buf->seen = 0;
		buf->ctrl->events = 0;
		buf->ctrl->drops = 0;
		buf->ctrl->bytes = 0;
		WRITE_ONCE(buf->ctrl->tail, 0);
		smp_store_release(&buf->ctrl->head, 0);
	}
}

static long kmx_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	void __user *uarg = (void __user *)arg;
	long ret = 0;

	mutex_lock(&kmx_lock);
	if (kmx_going) {
		mutex_unlock(&kmx_lock);
		return -ENODEV;
	}
	switch (cmd) {
	case KMX_IOC_START:
		if (!READ_ONCE(kmx_capturing)) {
			kmx_reset_rings();
			/* The probes read the rings only after seeing capturing set. */
			smp_store_release(&kmx_capturing, true);
			ret = kmx_probes_register();
			if (ret)
				WRITE_ONCE(kmx_capturing, false);
		}
		break;
	case KMX_IOC_STOP:
		if (READ_ONCE(kmx_capturing)) {
			WRITE_ONCE(kmx_capturing, false);
			kmx_probes_unregister(); /* no probe is still writing when STOP returns */
		}
		break;
	case KMX_IOC_SET_SNAPLEN: {
		__u32 value;

		if (copy_from_user(&value, uarg, sizeof(value)))
			ret = -EFAULT;
		else
			WRITE_ONCE(kmx_snaplen_now, kmx_clamp_snaplen(value));
		break;
	}
	case KMX_IOC_SET_FILTER_TGID: {
		__u64 value;

		if (copy_from_user(&value, uarg, sizeof(value)))
			ret = -EFAULT;
		else
			WRITE_ONCE(kmx_filter_tgid, value);
		break;
	}
	case KMX_IOC_SET_SAMPLING: {
		__u32 value;

		if (copy_from_user(&value, uarg, sizeof(value)))
			ret = -EFAULT;
		else
			WRITE_ONCE(kmx_sample_every, value);
		break;
	}
	case KMX_IOC_SET_TAIL: {
		struct kmx_tail value;
		struct kmx_cpu_buf *buf;

		if (copy_from_user(&value, uarg, sizeof(value))) {
			ret = -EFAULT;
			break;
		}
		if (value.cpu >= nr_cpu_ids || !cpu_possible(value.cpu) || value.tail >= kmx_size ||
		    (value.tail & (KMX_ALIGN - 1))) {
			ret = -EINVAL;
			break;
		}
		buf = per_cpu_ptr(kmx_bufs, value.cpu);
		smp_store_release(&buf->ctrl->tail, value.tail); /* the consumer is done with the bytes before it */
		break;
	}
	case KMX_IOC_GET_INFO: {
		struct kmx_info info;

		memset(&info, 0, sizeof(info));
		info.schema_version = KMX_SCHEMA_VERSION;
		info.ncpus = nr_cpu_ids;
		info.buffer_bytes = kmx_size;
		info.map_stride = kmx_stride;
		info.snaplen = READ_ONCE(kmx_snaplen_now);
		info.capturing = READ_ONCE(kmx_capturing);
		if (copy_to_user(uarg, &info, sizeof(info)))
			ret = -EFAULT;
		break;
	}
	case KMX_IOC_GET_STATS: {
		struct kmx_cpu_stats stats;
		struct kmx_cpu_buf *buf;

		if (copy_from_user(&stats, uarg, sizeof(stats))) {
			ret = -EFAULT;
			break;
		}
		if (stats.cpu >= nr_cpu_ids || !cpu_possible(stats.cpu)) {
			ret = -EINVAL;
			break;
		}
		buf = per_cpu_ptr(kmx_bufs, stats.cpu);
		stats.online = cpu_online(stats.cpu);
		stats.events = READ_ONCE(buf->events);
		stats.drops = READ_ONCE(buf->drops);
		stats.bytes = READ_ONCE(buf->bytes);
		if (copy_to_user(uarg, &stats, sizeof(stats)))
			ret = -EFAULT;
		break;
	}
	default:
		ret = -ENOTTY;
	}
	mutex_unlock(&kmx_lock);
	return ret;
}

/* mmap offset n * map_stride: CPU n's control page and data area. */
static int kmx_mmap(struct file *file, struct vm_area_struct *vma)
{
	u64 offset = (u64)vma->vm_pgoff << PAGE_SHIFT;
	unsigned long len = vma->vm_end - vma->vm_start;
	u64 cpu;

	if (offset % kmx_stride)
		return -EINVAL;
	cpu = div64_u64(offset, kmx_stride);
	if (cpu >= nr_cpu_ids || !cpu_possible(cpu) || len > kmx_stride)
		return -EINVAL;
	return remap_vmalloc_range(vma, per_cpu_ptr(kmx_bufs, cpu)->mem, 0);
}

static int kmx_open(struct inode *inode, struct file *file)
{
	atomic_inc(&kmx_open_files);
	return 0;
}

static int kmx_release(struct inode *inode, struct file *file)
{
	if (atomic_dec_and_test(&kmx_open_files))
		wake_up(&kmx_all_closed);
	return 0;
}

static const struct file_operations kmx_fops = {
	.owner = THIS_MODULE,
	.open = kmx_open,
	.release = kmx_release,
	.unlocked_ioctl = kmx_ioctl,
	.compat_ioctl = KMX_COMPAT_IOCTL,
	.mmap = kmx_mmap,
	.llseek = noop_llseek,
};

/*
 * /dev/kmx: a character device of its own class, whose device type names the node's group and
 * mode (devtmpfs creates it with them; a misc device can set the mode only).
 */
static dev_t kmx_devt;
static struct cdev kmx_cdev;
static struct class *kmx_class;
static struct device *kmx_device;

static char *kmx_devnode(KMX_DEVNODE_CONST struct device *dev, umode_t *mode, kuid_t *uid, kgid_t *gid)
{
	if (mode)
		*mode = device_mode & 0777;
#ifdef KMX_FAULT_OPEN_DEVICE
	if (mode)
		*mode = 0666; /* Test-only fault: the permission suite must fail. */
#endif
	if (gid)
		*gid = KGIDT_INIT(device_gid);
	return NULL;
}

static const struct device_type kmx_devtype = {
	.name = KMX_DEVICE_NAME,
	.devnode = kmx_devnode,
};

static void kmx_device_release(struct device *dev)
{
	kfree(dev);
}

static int kmx_device_create(void)
{
	int ret;

	ret = alloc_chrdev_region(&kmx_devt, 0, 1, KMX_DEVICE_NAME);
	if (ret)
		return ret;
	kmx_class = kmx_class_create(KMX_DEVICE_NAME);
	if (IS_ERR(kmx_class)) {
		ret = PTR_ERR(kmx_class);
		goto unregister;
	}
	cdev_init(&kmx_cdev, &kmx_fops);
	kmx_cdev.owner = THIS_MODULE;
	kmx_device = kzalloc(sizeof(*kmx_device), GFP_KERNEL);
	if (!kmx_device) {
		ret = -ENOMEM;
		goto destroy_class;
	}
	device_initialize(kmx_device);
	kmx_device->devt = kmx_devt;
	kmx_device->class = kmx_class;
	kmx_device->type = &kmx_devtype;
	kmx_device->release = kmx_device_release;
	ret = dev_set_name(kmx_device, KMX_DEVICE_NAME);
	if (!ret)
		ret = cdev_device_add(&kmx_cdev, kmx_device);
	if (ret) {
		put_device(kmx_device);
		goto destroy_class;
	}
	return 0;

destroy_class:
	class_destroy(kmx_class);
unregister:
	unregister_chrdev_region(kmx_devt, 1);
	return ret;
}

static void kmx_device_destroy(void)
{
	cdev_device_del(&kmx_cdev, kmx_device);
	put_device(kmx_device);
	class_destroy(kmx_class);
	unregister_chrdev_region(kmx_devt, 1);
}

static void kmx_free_buffers(void)
{
	int cpu;

	if (!kmx_bufs)
		return;
	for_each_possible_cpu(cpu)
		vfree(per_cpu_ptr(kmx_bufs, cpu)->mem);
	free_percpu(kmx_bufs);
	kmx_bufs = NULL;
}

static int kmx_alloc_buffers(void)
{
	int cpu;

	kmx_bufs = alloc_percpu(struct kmx_cpu_buf);
	if (!kmx_bufs)
		return -ENOMEM;
	for_each_possible_cpu(cpu) {
		struct kmx_cpu_buf *buf = per_cpu_ptr(kmx_bufs, cpu);

		buf->mem = vmalloc_user(kmx_stride);
		if (!buf->mem) {
			pr_err("kmx: cannot allocate %llu bytes for CPU %d\n", kmx_stride, cpu);
			kmx_free_buffers();
			return -ENOMEM;
		}
		buf->ctrl = buf->mem;
		buf->data = (u8 *)buf->mem + KMX_CTRL_SIZE;
		buf->ctrl->size = kmx_size;
	}
	return 0;
}

#ifdef KMX_FAULT_UNKNOWN_SYMBOL
/* Test-only: declared by the kernel (linux/kallsyms.h) but not exported to modules since 5.7. */
extern unsigned long kallsyms_lookup_name(const char *name);
#endif

static int __init kmx_init(void)
{
	int ret;

	BUILD_BUG_ON(sizeof(struct kmx_event_hdr) != KMX_HDR_SIZE);
	BUILD_BUG_ON(sizeof(struct kmx_ring_ctrl) > KMX_CTRL_SIZE);
#ifdef KMX_FAULT_OOPS_ON_LOAD
	/* Test-only: a NULL dereference in module init, the driver oops a fault drill must report. */
	*(volatile unsigned long *)NULL = buffer_bytes;
#endif
#ifdef KMX_FAULT_UNKNOWN_SYMBOL
	if (!kallsyms_lookup_name("kmx_init"))
		return -ENOENT;
#endif
	if (buffer_bytes < KMX_MIN_BUFFER || buffer_bytes > KMX_MAX_BUFFER) {
		pr_err("kmx: buffer_bytes=%lu out of range %lu..%lu\n", buffer_bytes, KMX_MIN_BUFFER, KMX_MAX_BUFFER);
		return -EINVAL;
	}
	kmx_size = PAGE_ALIGN(buffer_bytes);
	kmx_stride = PAGE_ALIGN(KMX_CTRL_SIZE + kmx_size);
	kmx_snaplen_now = kmx_clamp_snaplen(snaplen);
	kmx_sample_every = sample_every;
	ret = kmx_parse_redact_keys();
	if (ret)
		return ret;

	ret = kmx_alloc_buffers();
	if (ret)
		return ret;
	ret = kmx_probes_find();
	if (ret)
		goto free;
	ret = kmx_device_create();
	if (ret)
		goto free;
	pr_info("kmx: %u possible CPUs, %llu bytes per buffer, map stride %llu\n", nr_cpu_ids, kmx_size, kmx_stride);
	return 0;

free:
	kmx_free_buffers();
	return ret;
}

static void __exit kmx_exit(void)
{
	kmx_device_destroy();
	mutex_lock(&kmx_lock);
	kmx_going = true; /* no ioctl starts a capture again */
	WRITE_ONCE(kmx_capturing, false);
	kmx_probes_unregister(); /* waits for running probes (if still attached) */
	mutex_unlock(&kmx_lock);
	/* Only a forced unload gets here with files open: wait for them (see kmx_open_files). */
	while (!wait_event_timeout(kmx_all_closed, atomic_read(&kmx_open_files) == 0, 10 * HZ))
		pr_warn("kmx: forced unload waits for %d open file(s) of /dev/kmx to be closed\n",
			atomic_read(&kmx_open_files));
	kmx_free_buffers();
}

module_init(kmx_init);
module_exit(kmx_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmatrix reference syscall capture driver (raw_syscalls tracepoints, per-CPU mmap buffers)");
MODULE_AUTHOR("kmatrix");
