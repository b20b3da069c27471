"""The syscall-throughput benchmark: results model (`harness.bench.results`) and report (`harness.bench.report`).

Per (arch, kernel) one guest measures a syscall storm without capture (the baseline) and with
each subject attached: the reference drivers (kmod, bpf, modern_bpf) and the peers (ftrace,
auditd). Ratios measured within one run are the headline; absolute rates under QEMU TCG are
not comparable to hardware, so every figure carries the accelerator it was measured under.
"""
