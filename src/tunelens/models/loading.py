"""Load any Hugging Face causal LM by hub id or local path, optionally 4-/8-bit quantized.

Thin on purpose: transformers does the loading; this module turns its many failure modes (no
network, not a causal LM, missing bitsandbytes) into one line a user can act on.

Two checks are ours because transformers does not make them:

- Reachability. Without ``HF_HUB_OFFLINE`` set, an id that is neither a local folder nor cached
  makes huggingface_hub retry for about half a minute before failing. One short TCP probe of the
  hub endpoint first turns that into an immediate one-line error (or an offline load from the
  cache, when the files are there).
- Causal LM or not. ``AutoModelForCausalLM`` happily loads a BERT encoder (``BertLMHeadModel``
  is registered for causal LM) with a freshly initialised head, which would silently give
  nonsense. The checkpoint's declared ``architectures`` decide instead.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from tunelens.errors import TunelensError, first_line
from tunelens.models import references
from tunelens.models.quantized import keep_generic_where_unpackable

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def load_tokenizer(path_or_id: str, trust_remote_code: bool = False):
    """The tokenizer of a model (pad token defaulting to EOS, as generation and batching need)."""
    return _tokenizer(path_or_id, *_source(path_or_id), trust_remote_code)


def _tokenizer(path_or_id: str, source: str, local_only: bool, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code,
                                            local_files_only=local_only)
    except (OSError, ValueError) as exc:
        raise TunelensError(_cannot_load(path_or_id, "tokenizer", exc)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path_or_id: str, dtype: str = "float32", quantization=None,
               device_map: str | None = None, trust_remote_code: bool = False):
    """Load (model, tokenizer). ``quantization`` is a :class:`tunelens.config.QuantConfig` or None.

    ``dtype`` is one of :data:`tunelens.config.DTYPES` (``auto``: what the checkpoint declares);
    one this machine cannot compute in is refused before the weights are read
    (:func:`tunelens.models.run_settings.check_dtype`). Remote code runs only when
    ``trust_remote_code`` is asked for explicitly.
    """
    from transformers import AutoModelForCausalLM

    source, local_only, config = _checked_config(path_or_id, trust_remote_code)
    kwargs = _load_kwargs(path_or_id, dtype, quantization, device_map, trust_remote_code, local_only,
                          config)
    with _load_errors(path_or_id, config):
        model = AutoModelForCausalLM.from_pretrained(source, config=config, **kwargs)
    if quantization is not None:
        keep_generic_where_unpackable(model)
    return model, _tokenizer(path_or_id, source, local_only, trust_remote_code)


def _checked_config(path_or_id: str, trust_remote_code: bool):
    """(source, local_only, model config) of a causal LM, or a one-line error."""
    from transformers import AutoConfig

    source, local_only = _source(path_or_id)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code,
                                            local_files_only=local_only)
    except (OSError, ValueError) as exc:
        raise TunelensError(_cannot_load(path_or_id, "model config", exc)) from None
    _require_causal_lm(path_or_id, config)
    return source, local_only, config


def _load_kwargs(path_or_id: str, dtype: str, quantization, device_map: str | None,
                 trust_remote_code: bool, local_only: bool, config=None) -> dict:
    """``from_pretrained`` keyword arguments for a base model (dtype, quantization, placement);
    the dtype is checked to be one this machine computes in (``auto``: the one ``config`` declares)."""
    import torch

    from tunelens.models.run_settings import check_dtype

    check_dtype(dtype, path_or_id, config)
    kwargs: dict = {"trust_remote_code": trust_remote_code, "local_files_only": local_only,
                    "dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
    if device_map:
        kwargs["device_map"] = device_map
    if quantization is not None:
        kwargs["quantization_config"] = bnb_config(quantization)
    return kwargs


@contextlib.contextmanager
def _load_errors(path_or_id: str, config):
    """transformers' loading failures as one line naming what was being loaded."""
    try:
        yield
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise TunelensError(_not_causal(path_or_id, config)) from None
        raise
    except OSError as exc:
        raise TunelensError(_cannot_load(path_or_id, "model weights", exc)) from None


def bnb_config(quant):
    """A transformers ``BitsAndBytesConfig`` from our :class:`QuantConfig`.

    4-bit uses the NF4/FP4 type, double quantization and compute dtype of ``quant``; 8-bit is
    LLM.int8. bitsandbytes >= 0.47 runs both on the CPU too.
    """
    import torch
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TunelensError(
            "4-bit/8-bit loading needs bitsandbytes>=0.47: pip install 'bitsandbytes>=0.47'"
        ) from None
    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, quant.compute_dtype),
    )


def load_for_inference(model: str, quantization=None, *, dtype: str | None = None,
                       trust_remote_code: bool | None = None):
    """Load a trained run folder (full weights or a PEFT adapter over its base) or any model path/id.

    A folder with an ``adapter_config.json`` is an adapter: peft's ``AutoPeftModelForCausalLM``
    loads the base the adapter names (``base_model_name_or_path``: training loads local bases by
    their absolute path, see :func:`_source`) and puts the adapter on it, unmerged. The base is
    re-quantized the way it was trained for ``qlora`` runs (``run.json``'s ``quantization``), and
    loaded in the dtype and with the remote-code setting ``run.json`` records unless ``dtype`` /
    ``trust_remote_code`` are given (:class:`~tunelens.models.run_settings.ModelSettings`).
    """
    from tunelens.models.run_settings import ModelSettings

    settings = ModelSettings.of(model, dtype=dtype, trust_remote_code=trust_remote_code)
    dtype, trust_remote_code = settings.dtype, settings.trust_remote_code
    folder = Path(model)
    untrained = prompt_only_base(folder)
    if untrained is not None:  # strategy none: the run is its base, prompted its way
        return load_model(untrained, dtype=dtype, quantization=quantization,
                          trust_remote_code=trust_remote_code)
    if not (folder / "adapter_config.json").is_file():
        return load_model(model, dtype=dtype, quantization=quantization,
                          trust_remote_code=trust_remote_code)
    from peft import AutoPeftModelForCausalLM

    info = _run_info(folder)
    quantization = quantization or recorded_quantization(info)
    base = adapter_base(folder, info)
    _, local_only, config = _checked_config(base, trust_remote_code)
    kwargs = _load_kwargs(base, dtype, quantization, None, trust_remote_code, local_only, config)
    with _load_errors(base, config):
        tuned = AutoPeftModelForCausalLM.from_pretrained(str(folder), **kwargs)
    if quantization is not None:
        keep_generic_where_unpackable(tuned)
    return tuned, load_tokenizer(model, trust_remote_code)


def recorded_quantization(info: dict):
    """The 4-bit settings an adapter run's base was trained over, from its run.json: a qlora run,
    or a run started from one (grpo after a qlora SFT stage), records them under
    ``quantization``; a qlora run from before that key gets the defaults. None: a plain base.
    The one rule for every stage that rebuilds a run's base (inference, export, a GRPO start)."""
    from tunelens.config import QuantConfig

    recorded = info.get("quantization")
    if isinstance(recorded, dict):
        return QuantConfig(**recorded)
    return QuantConfig() if info.get("strategy") == "qlora" else None


def model_sources(model: str) -> list[Path]:
    """The local folders :func:`load_for_inference` reads for ``model``: the folder itself and,
    for an adapter, its base (when that is local). Empty for a hub id. A stage fingerprints their
    content (:func:`tunelens.fingerprint.fingerprint`) to know when a model changed."""
    folder = Path(model).expanduser()
    if not folder.is_dir():  # a .gguf file is its own content; a short name's is pinned
        return [folder] if folder.is_file() and references.is_gguf_reference(model) else []
    sources = [folder]
    untrained = prompt_only_base(folder)
    if untrained is not None and Path(untrained).is_dir():
        sources.append(Path(untrained))
    if (folder / "adapter_config.json").is_file():
        base = Path(adapter_base(folder, _run_info(folder))).expanduser()
        if base.is_dir():
            sources.append(base)
    return sources


def prompt_only_base(folder: Path) -> str | None:
    """The base an untrained run (strategy ``none``, :mod:`tunelens.train.prompt_only`) stands
    for; None for any other folder."""
    if not (folder / "run.json").is_file():
        return None
    info = _run_info(folder)
    if not info.get("prompt_only"):
        return None
    base = info.get("base_model")
    if not isinstance(base, str) or not base:
        raise TunelensError(f"{folder / 'run.json'}: an untrained run without base_model")
    return base


def _run_info(folder: Path) -> dict:
    """The run's ``run.json`` (empty for an adapter saved by other tools)."""
    from tunelens.io import read_json

    path = folder / "run.json"
    info = read_json(path) if path.is_file() else {}
    if not isinstance(info, dict):
        raise TunelensError(f"{path}: expected a JSON object")
    return info


def adapter_base(folder: Path, info: dict) -> str:
    """The base model an adapter names, checked to be there before peft tries to load it."""
    from tunelens.io import read_json

    config = read_json(folder / "adapter_config.json")
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base, str) or not base:
        raise TunelensError(f"{folder / 'adapter_config.json'}: no base_model_name_or_path")
    if looks_like_path(base) and not Path(base).expanduser().exists():
        recorded = info.get("base_model")
        if _reconverted(recorded, base):
            return base
        hint = f" (run.json records {recorded})" if recorded and recorded != base else ""
        raise TunelensError(f"{folder / 'adapter_config.json'}: the base model {base} is not "
                            f"there{hint}; the adapter cannot be loaded without it")
    return base


def _reconverted(recorded, base: str) -> bool:
    """Whether a run trained on a GGUF reference gets its de-quantised base back, the cache having
    been cleared: the folder is named by the file's hash, so converting again recreates it."""
    if not isinstance(recorded, str) or not references.is_gguf_reference(recorded):
        return False
    with contextlib.suppress(TunelensError):
        return references.resolve(recorded) == str(Path(base).expanduser())
    return False


def _source(path_or_id: str) -> tuple[str, bool]:
    """(what to pass to ``from_pretrained``, whether to stay off the network) or a one-line error.

    A ``.gguf`` file or a short name (``smollm2-135m``) becomes the local folder it was
    de-quantised into (:mod:`tunelens.models.references`). A local folder wins, by its absolute
    path: transformers records that as the model's ``name_or_path``, which peft writes into an
    adapter's config as its base, so an adapter trained from a relative path still finds its
    base from any working folder. Anything shaped
    like a path that does not exist fails at once, as does a hub id when the hub cannot be
    reached and the files are not in the local cache.
    """
    if not str(path_or_id).strip():
        raise TunelensError("empty model path or hub id")
    converted = references.resolve(path_or_id)  # a .gguf file or short name: its cached folder
    if converted is not None:
        return converted, False
    path = Path(path_or_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise TunelensError(f"{path_or_id}: is a file; expected a model folder, a .gguf file "
                                "or a hub id")
        return str(path.resolve()), False
    if looks_like_path(path_or_id):
        raise TunelensError(f"{path_or_id}: no such model folder")
    if (misspelt := references.unknown_short_name(path_or_id)) is not None:
        raise TunelensError(misspelt)
    if _offline():
        if not _cached(path_or_id):
            raise TunelensError(
                f"{path_or_id}: not a local folder and not in the Hugging Face cache, and "
                "HF_HUB_OFFLINE is set; download the model elsewhere and pass its local path"
            )
        return path_or_id, True
    if not _hub_reachable():
        if _cached(path_or_id):
            return path_or_id, True
        raise TunelensError(
            f"{path_or_id}: not a local folder and the model hub could not be reached; "
            "download the model elsewhere and pass its local path"
        )
    return path_or_id, False


def looks_like_path(text: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else the user typed is meant as a path."""
    return (text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1
            or text.endswith("/") or text == "")


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return constants.HF_HUB_OFFLINE or flag.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _require_causal_lm(path_or_id: str, config) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    declared = getattr(config, "architectures", None) or []
    if not declared:
        return  # nothing declared: let AutoModelForCausalLM decide by model type
    known = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        known.update([value] if isinstance(value, str) else value)
    if not any(a in known or a.endswith(_CAUSAL_SUFFIXES) for a in declared):
        raise TunelensError(_not_causal(path_or_id, config))


def _not_causal(path_or_id: str, config) -> str:
    arch = ", ".join(getattr(config, "architectures", None) or [type(config).__name__])
    hint = ""
    if (Path(path_or_id) / "modules.json").is_file():
        hint = "; it is a sentence-transformers model (use it as an embedding model)"
    return f"{path_or_id}: not a causal language model ({arch}){hint}"


def _cannot_load(path_or_id: str, what: str, exc: Exception) -> str:
    first = first_line(exc)
    if Path(path_or_id).expanduser().is_dir():
        return f"{path_or_id}: cannot load the {what} from this folder ({first})"
    return f"{path_or_id}: no such local folder, and the hub has no such model ({first})"


def load_placed(model: str, settings) -> tuple:
    """(model on its device, tokenizer): :func:`load_for_inference` in the dtype and remote-code
    setting of ``settings`` (a :class:`~tunelens.models.run_settings.ModelSettings`), then
    :func:`place_on_device`. What generate, explain and its checks load."""
    llm, tokenizer = load_for_inference(model, dtype=settings.dtype,
                                        trust_remote_code=settings.trust_remote_code)
    return place_on_device(llm), tokenizer


def place_on_device(model):
    """Use the GPU when there is one, unless the model is quantized or already dispatched."""
    import torch

    if not torch.cuda.is_available():
        return model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "hf_quantizer", None) is not None or getattr(base, "hf_device_map", None):
        return model
    return model.to("cuda")
