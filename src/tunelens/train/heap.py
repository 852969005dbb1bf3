"""Give freed activations back to the system on the CPU (glibc), so gradient checkpointing saves memory.

glibc's malloc serves a block of at least ``M_MMAP_THRESHOLD`` bytes with its own ``mmap`` and
unmaps it on free, but after freeing such a block it raises the threshold to that block's size (up
to 32 MiB). From then on the activations of a training step, a few MiB each, come from the heap,
where freed blocks stay mapped for reuse and fragment: SmolLM2 LoRA at 8 x 256 with gradient
checkpointing peaked at 2.76 GB RSS, against 1.48 GB with the threshold pinned at 1 MiB
(``benchmarks/train_throughput.py --smollm2``). Pinning costs page faults (the kernel zeroes every
fresh block): that run's tokens/s dropped 1.55x, which is why only a training that asks for it
(``train.release_memory``: memory over time) pins it.

Why ours: PyTorch's CPU allocator is plain ``malloc``, and jemalloc or tcmalloc would have to be
preloaded before the process starts; ``mallopt`` is the one switch a running process has. glibc
cannot re-enable its dynamic threshold, so the pin stays for the rest of the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
PINNED_BYTES = 1 << 20


def pin_mmap_threshold(nbytes: int = PINNED_BYTES) -> bool:
    """Serve every allocation of ``nbytes`` or more with its own mapping from now on; False where
    the C library is not glibc (nothing to do: other allocators behave differently)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl's mallopt is a no-op)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, nbytes))
