"""The OpenVZ rules: pure parsing, rendering and mapping.  No I/O, no kernel.

Every layer may use these; they import only ``ctfs.errors`` and the value types of
``ctfs.kernel.api``.
"""
