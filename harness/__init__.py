"""kmatrix: qualify syscall-capture drivers across architectures and kernels.

Kept import-free on purpose: the guest agent ships this package's `protocol` and `guest`
modules into the VM, where only the Python standard library exists.
"""

__version__ = "0.1.0"
