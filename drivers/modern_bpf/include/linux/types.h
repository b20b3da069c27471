/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * kmx_events.h includes <linux/types.h>; the modern probe is built against vmlinux.h, which
 * already defines __u8 ... __u64 (and must come first). This stands in for the UAPI header.
 */
#ifndef KMX_MODERN_LINUX_TYPES_H
#define KMX_MODERN_LINUX_TYPES_H
#ifndef __VMLINUX_H__
#error "include vmlinux.h before kmx_events.h"
#endif
#endif
