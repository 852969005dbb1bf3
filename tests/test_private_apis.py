"""Every private API of another library tunelens relies on, pinned: each test fails by name, with
what to update, the day that library moves it (sacrebleu's scoring internals are pinned in
tests/test_evaluate.py beside the code that uses them)."""

from __future__ import annotations

import inspect


def test_bitsandbytes_cpu_repack_inverse():
    """tunelens.models.quantized.use_autograd_4bit undoes bitsandbytes' CPU repacking."""
    import bitsandbytes.functional as bnbf

    assert callable(getattr(bnbf, "_convert_weight_packed_for_cpu_inverse", None)), (
        "bitsandbytes.functional._convert_weight_packed_for_cpu_inverse is gone: update "
        "tunelens.models.quantized.use_autograd_4bit to bitsandbytes' new API")
    from bitsandbytes.nn import Linear4bit

    assert "support_avx512bf16_for_cpu" in inspect.getsource(Linear4bit), (
        "bitsandbytes' Linear4bit no longer has support_avx512bf16_for_cpu: update "
        "tunelens.models.quantized (FLAG)")


def test_peft_lora_variant_caches():
    """tunelens.explain.layers.weight_change drops the cache entries DoRA's merge_safe leaves in
    a LoRA layer's ``_caches`` (no public way to merge without caching)."""
    from peft.tuners.lora.layer import LoraLayer

    assert "_caches" in inspect.getsource(LoraLayer), (
        "peft's LoraLayer no longer keeps _caches: update tunelens.explain.layers._adapter_delta")


def test_transformers_attention_implementation_attribute():
    """tunelens.explain.attention.eager_attention reads ``config._attn_implementation`` to know
    which kernel is active (set_attn_implementation is public, the reading side is not)."""
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                         intermediate_size=8, vocab_size=16)
    assert hasattr(config, "_attn_implementation"), (
        "transformers configs no longer have _attn_implementation: update "
        "tunelens.explain.attention.eager_attention")


def test_trl_fused_head_device_switch():
    """tunelens.train.trainer_args.completion_positions_only swaps TRL's private
    ``trl.trainer.utils._use_triton`` so the CPU scores only labelled positions (the path TRL
    already takes on CUDA); without it the switch silently does nothing and training is slower."""
    from trl.trainer import utils as trl_utils

    assert callable(getattr(trl_utils, "_use_triton", None)), (
        "trl.trainer.utils._use_triton is gone: update "
        "tunelens.train.trainer_args.completion_positions_only to TRL's new API")


def test_trl_fused_head_tile_constant():
    """small_vocab_tiles swaps TRL's private ``trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE``,
    which the fused forward reads at call time; without it the CPU peak grows by ~0.6 GB on
    SmolLM2 and nothing fails."""
    from trl.trainer import utils as trl_utils

    assert isinstance(getattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", None), int), (
        "trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE is gone: update "
        "tunelens.train.trainer_args.small_vocab_tiles to TRL's new API")
    assert "_CHUNKED_LOGPROB_CHUNK_SIZE" in inspect.getsource(trl_utils.add_fused_lm_head), (
        "TRL's fused LM head no longer reads _CHUNKED_LOGPROB_CHUNK_SIZE: update "
        "tunelens.train.trainer_args.small_vocab_tiles")
