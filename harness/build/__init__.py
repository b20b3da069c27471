"""Toolchains and builds: the kernel module (kmod.py) and the compilers it needs (toolchain.py)."""
