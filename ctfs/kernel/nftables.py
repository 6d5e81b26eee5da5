"""Load an nftables script through libnftables, the library behind the nft command.

In-process: no nft process per change (17 ms of a 34 ms network setup here).
Falls back to running ``nft -f -`` where the library cannot be loaded.
"""

from __future__ import annotations

import ctypes
import subprocess
import threading

_LIBRARY = "libnftables.so.1"
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def _library() -> ctypes.CDLL | None:
    global _lib, _tried
    if not _tried:
        _tried = True
        try:
            lib = ctypes.CDLL(_LIBRARY)
        except OSError:
            return None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        _lib = lib
    return _lib


def load(script: str) -> str | None:
    """Apply ``script`` atomically (one transaction); the first error line, or None."""
    with _lock:
        lib = _library()
    if lib is None:
        return _load_with_command(script)
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        return "libnftables could not make a context"
    try:
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        if lib.nft_run_cmd_from_buffer(ctx, script.encode()) == 0:
            return None
        error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        return next((line for line in error.splitlines() if line.strip()), "no reason given")
    finally:
        lib.nft_ctx_free(ctx)


def _load_with_command(script: str) -> str | None:
    try:
        done = subprocess.run(
            ["nft", "-f", "-"], input=script, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        return "neither libnftables nor nft is installed (the nftables package)"
    if done.returncode == 0:
        return None
    return next((line for line in done.stderr.splitlines() if line.strip()), "no reason given")
