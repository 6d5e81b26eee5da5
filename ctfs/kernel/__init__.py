"""Typed backends over the kernel: cgroups, namespaces, storage, processes."""
