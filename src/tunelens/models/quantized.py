"""bitsandbytes' 4-bit layers on a CPU: when to keep them off the inference-only kernel.

On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight for a fast inference kernel at the
first eval-mode forward. That kernel has no autograd (training and gradient attribution would get
wrong input gradients) and its repacking fails for shapes that are not multiples of the
quantisation block (small models). These helpers are the one place tunelens steers it.

Private API, pinned: undoing a repack needs ``bitsandbytes.functional.
_convert_weight_packed_for_cpu_inverse`` (no public inverse exists); ``tests/test_private_apis.py``
fails by name when bitsandbytes moves it.
"""

from __future__ import annotations

FLAG = "support_avx512bf16_for_cpu"


def use_autograd_4bit(model) -> list:
    """Put every 4-bit CPU layer on the generic, differentiable path, unpacking weights that were
    already repacked; return the layers that had the fast kernel on (see :func:`restore_fast_4bit`)."""
    switched = []
    for module in model.modules():
        if not hasattr(module, FLAG):
            continue
        if getattr(module, FLAG):
            switched.append(module)
        setattr(module, FLAG, False)
        state = getattr(module.weight, "quant_state", None)
        if getattr(state, "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, state
            )
    return switched


def restore_fast_4bit(modules: list) -> None:
    """Let layers switched by :func:`use_autograd_4bit` use the fast kernel again."""
    for module in modules:
        setattr(module, FLAG, True)


def keep_generic_where_unpackable(model) -> None:
    """Layers whose input size is not a multiple of the quantisation block (64) or whose output
    size is not a multiple of 32 cannot be repacked (a reshape error): they keep the generic path."""
    for module in model.modules():
        if not getattr(module, FLAG, False):
            continue
        state = getattr(module.weight, "quant_state", None)
        block = getattr(state, "blocksize", 64) or 64
        if module.in_features % block or module.out_features % 32:
            setattr(module, FLAG, False)
