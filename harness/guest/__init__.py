"""The agent that runs inside the guest. Standard library only; it never knows about QEMU."""
