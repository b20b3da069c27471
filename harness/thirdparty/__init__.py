"""Third-party drivers under test, built from their distributions' sources (not the project's).

falco.py: Falco's kernel module (scap.ko) from Debian's falcosecurity-scap-dkms, cross-built
against the same Debian headers the reference kmod uses.
"""
