"""Typed backends over the kernel: cgroups, namespaces, storage, processes."""

# Where the cgroup hierarchies are mounted; a plain string so that modules on the
# ``ctfs exec`` path need not import pathlib.
CGROUP_ROOT = "/sys/fs/cgroup"
