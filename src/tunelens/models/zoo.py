"""The scale ladder: small Llama-architecture models trained from scratch on the bundled corpus.

No hub is reachable on the machines tunelens is developed and tested on, so the study needs base
models it can make itself. Each is saved as a standard checkpoint (config.json, model.safetensors,
tokenizer files, a model card) that ``AutoModelForCausalLM``/``AutoTokenizer`` load unchanged, so
the rest of the pipeline cannot tell them from a hub model.

What the ladder is pre-trained on, and why. The corpus is the bundled code-compliance dataset,
minus every row flagged ``holdout``. Of the remaining rows the models see the bare clause texts and
the bare rule texts as separate documents, packed into separate blocks (clauses never share a block
with rules), never a clause next to its rule and never the prompt template. So a base model knows
both languages, building-code English and the rule notation, but has never seen the mapping from a
clause to its rule: that is learned only in fine-tuning, which is what the study measures. The
study's test split is drawn later by a seeded split of the same non-holdout rows, so a test
clause (and, separately, its rule) may have been seen as plain text; the pairing has not. The
holdout rows are never seen at all, not even by the tokenizer.

Every rung of a preset gets the same data, the same number of tokens and the same seed, so model
size is the only thing that varies along the ladder. The preset table below is the zoo's recipe,
not a study setting: a study names the models it uses by path (``<zoo>/tl-d2``), so these numbers
do not belong in :mod:`tunelens.config`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tunelens.errors import TunelensError, check_choice
from tunelens.fingerprint import fingerprint
from tunelens.io import atomic_dir, read_json, write_json, write_text
from tunelens.models.card import model_card

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                  "unk_token": "<unk>", "mask_token": "<mask>"}
LADDER_FILE = "ladder.json"


@dataclass(frozen=True)
class Rung:
    """One model of a ladder: its name, shape and peak learning rate (small models take larger)."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    learning_rate: float


@dataclass(frozen=True)
class Preset:
    """A ladder recipe: shared tokenizer and data settings, then one :class:`Rung` per model."""

    name: str
    vocab_size: int
    block_size: int
    batch_size: int
    steps: int
    max_positions: int
    seed: int
    rungs: tuple[Rung, ...]


# Wider rather than deeper: in runs this short, extra depth trains slower than it helps, and a
# 4-layer top rung ended with a higher loss than the rung below it. With at most two layers and
# these peak learning rates the final loss falls monotonically with size on the bundled corpus
# (quick: about 4.3, 3.4, 2.8, 2.6; demo: about 3.3, 1.9, 1.8, 1.5; see benchmarks/zoo_build.py).
def _rungs(prefix: str, *shapes: tuple) -> tuple[Rung, ...]:
    """Rungs ``<prefix>1..N`` from (hidden, layers, heads, MLP width, learning rate) tuples."""
    return tuple(Rung(f"{prefix}{i}", *shape) for i, shape in enumerate(shapes, start=1))


PRESETS: dict[str, Preset] = {
    # Tests and CI: ~19k to ~0.78M parameters (41x); about 15 s on one CPU core, ~1.5 epochs.
    "quick": Preset("quick", vocab_size=512, block_size=128, batch_size=8, steps=80, max_positions=512,
                    seed=0, rungs=_rungs("tl-q", (16, 1, 2, 32, 5e-3), (32, 2, 2, 64, 5e-3),
                                         (64, 2, 4, 128, 5e-3), (160, 2, 5, 432, 3e-3))),
    # The demo study: ~40k to ~2.1M parameters (53x); one to two minutes on one CPU core,
    # ~8 epochs of the corpus.
    "demo": Preset("demo", vocab_size=1024, block_size=256, batch_size=8, steps=150, max_positions=512,
                   seed=0, rungs=_rungs("tl-d", (16, 2, 2, 48, 5e-3), (64, 2, 4, 172, 5e-3),
                                        (128, 2, 4, 344, 3e-3), (256, 2, 8, 688, 2e-3))),
}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style) with BOS prepended, trained on ``texts``."""
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    fast.padding_side = "right"
    return fast


def new_llama(tokenizer: PreTrainedTokenizerFast, hidden_size: int, num_layers: int,
              num_heads: int, intermediate_size: int | None = None, max_positions: int = 512,
              seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised (seeded) Llama model sized for ``tokenizer``."""
    import torch

    torch.manual_seed(seed)
    config = _llama_config(len(tokenizer), hidden_size, num_layers, num_heads,
                           intermediate_size or 4 * hidden_size, max_positions,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


def _llama_config(vocab_size: int, hidden_size: int, num_layers: int, num_heads: int,
                  intermediate_size: int, max_positions: int, **token_ids) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                       intermediate_size=intermediate_size, num_hidden_layers=num_layers,
                       num_attention_heads=num_heads, num_key_value_heads=num_heads,
                       max_position_embeddings=max_positions, tie_word_embeddings=False,
                       **token_ids)


def rung_config(preset: str, name: str) -> LlamaConfig:
    """The shape of a ladder model before it is built (its vocabulary at the preset's size), for
    memory estimates of a study that has not run yet."""
    spec = _preset(preset)
    for rung in spec.rungs:
        if rung.name == name:
            return _llama_config(spec.vocab_size, rung.hidden_size, rung.num_layers,
                                 rung.num_heads, rung.intermediate_size, spec.max_positions)
    names = ", ".join(r.name for r in spec.rungs)
    raise TunelensError(f"zoo: no model '{name}' in preset '{preset}' ({names})")


def save_checkpoint(model, tokenizer, out: str | Path) -> Path:
    """``save_pretrained`` of both, without transformers' per-shard progress bar in our output.

    transformers writes the weights through a private temporary file (mode 0600); they get the
    usual umask permissions back so that a shared zoo can be read by everyone who may read it.
    """
    from transformers.utils import logging as hf_logging

    out = Path(out)
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    umask = os.umask(0)
    os.umask(umask)
    for f in out.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~umask)
    return out


def pretraining_texts(rows: Sequence[dict], seed: int = 0) -> tuple[list[str], list[str]]:
    """(clauses, rules): the unique bare texts of the non-holdout rows, each list in a seeded order.

    See the module docstring for why pairs are split apart. A row without a ``holdout`` key counts
    as not held out.
    """
    clauses: dict[str, None] = {}
    rules: dict[str, None] = {}
    for row in rows:
        if row.get("holdout", False):
            continue
        for text, into in ((row["prompt"], clauses), (row["completion"], rules)):
            text = text.strip()
            if text:
                into[text] = None
    rng = random.Random(seed)
    out = []
    for texts in (list(clauses), list(rules)):
        rng.shuffle(texts)
        out.append(texts)
    if not out[0] or not out[1]:
        raise TunelensError("zoo: the pre-training corpus has no non-holdout clauses or rules")
    return out[0], out[1]


def build_zoo(preset: str, out: Path, force: bool = False, *,
              rows: Sequence[dict] | None = None, threads: int | None = None) -> list[dict]:
    """Build (or reuse) the ladder of ``preset`` in ``out`` and return its entries (absolute paths).

    ``rows`` replaces the bundled dataset (rows with ``prompt``, ``completion`` and optionally
    ``holdout``); the default, and what the CLI uses, is
    ``tunelens.data.compliance.dataset.bundled_rows()``. A folder holding a build with the same
    key (preset, corpus, code and library versions) is reused unless ``force``; anything else is
    rebuilt in a temporary folder and renamed onto ``out`` only when every model is saved.
    ``threads`` is torch's intra-op threads while pre-training (default 1: these models are small
    enough that more threads mostly spin).
    """
    from rich.console import Console

    console = Console(stderr=True)
    spec = _preset(preset)
    out = Path(out)
    source = "The bundled tunelens code-compliance dataset" if rows is None else "User-supplied rows"
    if rows is None:
        rows = _bundled_rows()
    clauses, rules = pretraining_texts(rows, seed=spec.seed)
    key = build_key(spec, clauses, rules)
    previous = _previous_build(out)
    if previous is not None and not force and previous.get("build_key") == key["hash"] \
            and _complete(out, previous):
        console.print(f"zoo: reused the identical '{preset}' build in {out}")
        return read_ladder(out)
    from tunelens.models.pretrain import pack_blocks

    with atomic_dir(out) as tmp:
        tokenizer = train_tokenizer(_tokenizer_corpus(clauses, rules), vocab_size=spec.vocab_size)
        blocks = (pack_blocks(tokenizer, clauses, spec.block_size)
                  + pack_blocks(tokenizer, rules, spec.block_size))
        entries = _train_ladder(spec, tokenizer, blocks, tmp, threads or 1)
        corpus = {
            "source": source,
            "rows": len(rows),
            "holdout_rows_excluded": sum(bool(r.get("holdout", False)) for r in rows),
            "clauses": len(clauses),
            "rules": len(rules),
            "blocks": len(blocks),
            "tokens": len(blocks) * spec.block_size,
            "fingerprint": key["corpus"],
        }
        for entry in entries:
            write_text(tmp / entry["path"] / "README.md", model_card(spec, entry, corpus))
        write_json(tmp / LADDER_FILE, {
            "preset": spec.name,
            "build_key": key["hash"],
            "build": key,
            "tokenizer": {"type": "byte-level BPE", "vocab_size": len(tokenizer)},
            "corpus": corpus,
            "models": entries,
        })
    return read_ladder(out)


def read_ladder(out: str | Path) -> list[dict]:
    """The entries of the ladder in ``out`` (name, path, params, tokens_seen, final_loss, seconds,
    shape), with ``path`` made absolute so it can be passed straight to a loader."""
    out = Path(out)
    ladder = read_json(out / LADDER_FILE)
    return [{**e, "path": str((out / e["path"]).resolve())} for e in ladder["models"]]


def build_key(spec: Preset, clauses: Sequence[str], rules: Sequence[str]) -> dict:
    """What makes two builds identical: the recipe, the corpus, this code and the libraries.

    Each part is a :func:`tunelens.fingerprint.fingerprint` (the code part hashes the *content*
    of :func:`build_sources`), recorded in ladder.json so a reader can see which part changed.
    """
    import tokenizers
    import torch
    import transformers

    import tunelens
    from tunelens.data.templates import render_plain

    parts = {
        "preset": asdict(spec),
        "corpus": fingerprint("zoo corpus", list(clauses), list(rules), render_plain("")),
        "code": fingerprint("zoo code", files=build_sources()),
        "versions": {"tunelens": tunelens.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
    }
    parts["hash"] = fingerprint("zoo build", parts)
    return parts


def build_sources() -> list[Path]:
    """The source files whose code decides what a build produces (an edit to one rebuilds)."""
    from tunelens.models import card, pretrain

    return [Path(__file__), Path(pretrain.__file__), Path(card.__file__)]


def _preset(name: str) -> Preset:
    return PRESETS[check_choice(name, PRESETS, "zoo: unknown preset")]


def _bundled_rows() -> list[dict]:
    from tunelens.data.compliance.dataset import bundled_rows

    return bundled_rows(seed=0)


def _tokenizer_corpus(clauses: list[str], rules: list[str]) -> list[str]:
    """The pre-training texts plus the fixed prompt template, once per clause as in fine-tuning.

    The template carries no clause or rule, so giving the tokenizer its frequency leaks nothing;
    it only keeps ``### Instruction:`` and friends from being spelled out byte by byte later.
    """
    from tunelens.data.templates import render_plain

    return clauses + rules + [render_plain("")] * len(clauses)


def _previous_build(out: Path) -> dict | None:
    """The ladder.json of an earlier build in ``out``; refuse to replace a folder that is not one."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise TunelensError(f"{out}: exists and is not a folder")
    if (out / LADDER_FILE).is_file():
        try:
            return read_json(out / LADDER_FILE)
        except TunelensError:
            return {}
    if any(out.iterdir()):
        raise TunelensError(f"{out}: folder exists and is not a zoo build; choose another --out")
    return None


def _complete(out: Path, ladder: dict) -> bool:
    return all((out / e["path"] / name).is_file()
               for e in ladder.get("models", [])
               for name in ("config.json", "model.safetensors", "tokenizer.json"))


def _train_ladder(spec: Preset, tokenizer, blocks, tmp: Path, threads: int) -> list[dict]:
    from tunelens.models.pretrain import pretrain
    from tunelens.progress import item_bar

    entries = []
    with item_bar() as progress:
        for rung in spec.rungs:
            task = progress.add_task(rung.name, total=spec.steps)
            model = new_llama(tokenizer, rung.hidden_size, rung.num_layers, rung.num_heads,
                              rung.intermediate_size, max_positions=spec.max_positions,
                              seed=spec.seed)
            result = pretrain(
                model, tokenizer, blocks, steps=spec.steps, batch_size=spec.batch_size,
                learning_rate=rung.learning_rate, seed=spec.seed, cpu_threads=threads,
                on_step=lambda step, task=task: progress.update(task, completed=step),
            )
            model.config.use_cache = True
            save_checkpoint(model.to("cpu"), tokenizer, tmp / rung.name)
            entries.append({
                "name": rung.name,
                "path": rung.name,
                "params": sum(p.numel() for p in model.parameters()),
                "tokens_seen": result.tokens_seen,
                "final_loss": round(result.final_loss, 4),
                "seconds": round(result.seconds, 2),
                **{k: v for k, v in asdict(rung).items() if k != "name"},
                "steps": spec.steps,
                "loss_history": result.loss_history,
            })
    return entries
