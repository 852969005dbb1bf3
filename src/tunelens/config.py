"""The study configuration: YAML in, validated objects out, and the only place defaults live.

Every stage takes its section of :class:`Study` (or the whole study); CLI flags override fields of
those sections, never re-declare their defaults. A bad key or value fails with one line naming the
key path (``train.lora.rank``) and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, NotRequired, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict  # pydantic needs this one below Python 3.12

from tunelens.errors import TunelensError
from tunelens.explain.catalog import BASELINES, GRANULARITIES, METHODS
from tunelens.explain.checks_settings import ChecksConfig
from tunelens.io import printable, read_text
from tunelens.train.catalog import OBJECTIVES, STRATEGIES
from tunelens.train.grpo_settings import GRPO, GrpoConfig
from tunelens.tune.space import TuneConfig

# The allowed values come from the registries that implement them (one list each, see catalog.py).
Strategy = Literal[tuple(STRATEGIES)]
Objective = Literal[tuple(OBJECTIVES)]
Method = Literal[tuple(METHODS)]
Granularity = Literal[tuple(GRANULARITIES)]
Baseline = Literal[tuple(BASELINES)]
DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: the checkpoint's; for training, see precision
Dtype = Literal[DTYPES]
PROMPT_FORMATS = ("auto", "chat", "plain")
PromptFormat = Literal[PROMPT_FORMATS]


class Section(BaseModel):
    """Base of every section: unknown keys are errors, not silently ignored.

    A number is never turned into text (pydantic's default, kept on purpose and tested): a
    ``path: 123`` in YAML is an error naming ``models.0.path``, not the path "123".
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    """Where the examples come from and how they are cleaned and split."""

    source: str = Field("bundled", description="'bundled' (the code-compliance set) or a file")
    id_column: str = Field("id", description="input column of row ids; absent: content-hash ids")
    prompt_column: str = Field("prompt", description="input column holding the clause")
    completion_column: str = Field("completion", description="input column holding the rule")
    topic_column: str = Field("topic", description="input column of topics; absent: 'unspecified'")
    stratify_by: str | None = Field(
        "topic", description="split stratified by this: 'topic', 'source' or another input column"
    )
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    min_chars: int = Field(1, ge=1, description="shorter prompts or completions are dropped")
    max_chars: int = Field(4000, ge=1, description="longer prompts or completions are dropped")
    near_duplicate_threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="prompts with word-shingle Jaccard >= this are near-duplicates"
    )
    minhash_permutations: int = Field(128, ge=16)
    shingle_size: int = Field(3, ge=1, description="words per shingle")
    seed: int = 0

    @model_validator(mode="after")
    def _fractions_leave_training_rows(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1 (train needs rows)")
        if self.min_chars > self.max_chars:
            raise ValueError("min_chars must not exceed max_chars")
        return self


class ModelSpec(Section):
    """One base model of the study: a short name, a hub id or local path, and how it is loaded
    and prompted. Training records ``dtype``, ``trust_remote_code`` and the resolved
    ``prompt_format`` in the run's ``run.json``; generation and attribution reload the run that
    way, so a run is always used the way it was trained."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    path: str
    dtype: Dtype = Field(
        "float32", description="weights' dtype for training, generation and attribution; 'auto' is "
        "what the checkpoint declares; a dtype this machine cannot compute in is refused before work"
    )
    trust_remote_code: bool = Field(
        False, description="run the model's own code from its folder or hub repo (needed by "
        "checkpoints whose config names custom classes); off unless asked for"
    )
    prompt_format: PromptFormat = Field(
        "auto", description="'chat' renders the clause through the tokenizer's chat template, "
        "'plain' through the documented plain template; 'auto' is chat when the tokenizer has a "
        "template"
    )


class LoraConfig(Section):
    """Adapter shape for ``lora``, ``qlora`` and ``dora`` (PEFT's ``LoraConfig``)."""

    rank: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module-name suffixes, or 'all-linear' (every linear but the LM head)"
    )


class QuantConfig(Section):
    """bitsandbytes settings used by ``qlora`` (4-bit) or when loading a model quantized."""

    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal[DTYPES[1:]] = "float32"


class TrainConfig(Section):
    """Optimisation settings shared by every strategy (strategy-specific ones are nested)."""

    max_steps: int = Field(60, ge=1)
    learning_rate: float = Field(5e-4, gt=0.0)
    full_learning_rate: float | None = Field(
        None, description="learning rate for full/freeze fine-tuning; defaults to learning_rate/5"
    )
    batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    release_memory: bool = Field(False, description="on the CPU (glibc), give freed activations "
                                 "back to the system at once: a lower peak (SmolLM2 LoRA 8x256 with "
                                 "checkpointing 2.8 -> 1.5 GB) for ~1.5x fewer tokens/s, for the "
                                 "rest of the process")
    gradient_checkpointing: bool = Field(False, description="recompute each block's activations in "
                                         "the backward pass: less memory, more compute; every strategy")
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = Field(
        "adamw", description="AdamW in fp32 (torch), or bitsandbytes' 8-bit AdamW (optimizer states "
        "in 8 bits: a quarter of the memory) or its paged variant (states paged out under GPU "
        "memory pressure)"
    )
    max_length: int = Field(256, ge=8)
    weight_decay: float = Field(0.0, ge=0.0)
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="override model dropout")
    neftune_noise_alpha: float | None = Field(None, gt=0.0)
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    logging_steps: int = Field(5, ge=1)
    eval_steps: int | None = Field(None, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1)
    curriculum: Literal["none", "length", "loss"] = "none"
    freeze_top_k: int = Field(1, ge=1, description="'freeze' strategy: train only the top k layers")
    gradual_unfreezing: bool = Field(
        False, description="'full' strategy: unfreeze layers top-down over the steps (ULMFiT-style)"
    )
    packing: bool | None = Field(
        None, description="pack examples into max_length blocks (best-fit, no cross-example "
        "attention); default: on for 'causal', off for 'instruct' (without a varlen attention "
        "kernel a pack costs attention over its whole length); always off with a curriculum, "
        "since packing reorders examples"
    )
    precision: Dtype = Field(
        "auto", description="mixed precision; 'auto' is bfloat16 on a GPU that has it, else float32"
    )
    save_steps: int | None = Field(
        None, ge=1, description="also checkpoint every N steps (Ctrl-C always checkpoints)"
    )
    lora: LoraConfig = LoraConfig()
    quantization: QuantConfig = QuantConfig()
    grpo: GrpoConfig = Field(GrpoConfig(), description="strategy grpo (tunelens.train.grpo_settings)")
    seed: int = Field(0, description="init, data order, dropout; in a study, each cell's seed ('seeds') "
                      "replaces it")


class RagConfig(Section):
    """Retrieval-augmented generation: ``enabled`` is a matrix axis (``[false, true]`` runs both)."""

    enabled: list[bool] = Field(default_factory=lambda: [False])
    k: int = Field(3, ge=1, description="retrieved examples placed before the clause")
    corpus: str | None = Field(None, description="JSONL corpus; default: the training split")
    embedding_model: str | None = Field(
        None, description="sentence-transformers path; default: the bundled all-MiniLM-L6-v2"
    )


class GenerationConfig(Section):
    """Decoding settings: greedy by default; sampling controls apply only with ``do_sample``."""

    max_new_tokens: int = Field(96, ge=1)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 disables top-k filtering")
    repetition_penalty: float = Field(1.0, gt=0.0)
    num_samples: int = Field(1, ge=1, description="samples per prompt (needs do_sample when > 1)")
    stop: list[str] = Field(default_factory=lambda: ["\n\n"],
                            description="output is cut at the first of these strings")
    batch_size: int = Field(16, ge=1, description="most prompts per generate call")
    max_batch_tokens: int = Field(
        16384, ge=1, description="most rows x (longest prompt + max_new_tokens) per call: bounds the "
        "KV cache; longer inputs get smaller batches"
    )
    max_examples: int | None = Field(
        None, ge=1, description="generate for a seeded sample of this many rows, stratified by topic "
        "and source (the same rows for every run); default: every row"
    )
    sample_seed: int = Field(0, ge=0, description="seed of the max_examples sample")
    seed: int = Field(0, description="sampling; in a study, each cell's seed ('seeds') "
                      "replaces it")

    @model_validator(mode="after")
    def _samples_need_sampling(self) -> GenerationConfig:
        if self.num_samples > 1 and not self.do_sample:
            raise ValueError("num_samples > 1 needs do_sample: true (greedy gives one answer)")
        return self


class JudgeConfig(Section):
    """The LLM judge: an OpenAI-compatible server (url + model) or a local model (path), or none."""

    url: str | None = Field(None, description="OpenAI-compatible server, e.g. http://localhost:11434")
    model: str | None = Field(None, description="model name the server knows (needed with url)")
    path: str | None = Field(None, description="local Hugging Face model used as judge")
    template_version: str = Field("v1", description="prompt template judge_templates/<version>.txt")
    timeout_seconds: float = Field(60.0, gt=0.0)
    retries: int = Field(2, ge=0, description="re-asks after an unparseable reply")
    http_retries: int = Field(
        4, ge=0, description="re-tries of one HTTP request (429, 5xx, timeouts), with back-off"
    )
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0, description="first attempt (0: greedy)")
    retry_temperature: float = Field(0.7, ge=0.0, description="re-asks sample so they can differ")

    @model_validator(mode="after")
    def _one_backend(self) -> JudgeConfig:
        if self.url and self.path:
            raise ValueError("give a judge url (with model) or a local path, not both")
        if self.url and not self.model:
            raise ValueError("a judge url needs a model name")
        if self.model and not (self.url or self.path):
            raise ValueError("a judge model name needs a url")
        return self


class EvaluationConfig(Section):
    bootstrap_samples: int = Field(1000, ge=10)
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    embedding_model: str | None = Field(
        None, description="semantic similarity model; default: the bundled all-MiniLM-L6-v2"
    )
    bertscore_model: str | None = Field(
        None, description="BERTScore encoder (hub id or folder), named in the metric keys; "
        "default: the bundled all-MiniLM-L6-v2"
    )
    judge: JudgeConfig = JudgeConfig()
    seed: int = 0


class ExplanationConfig(Section):
    """Token attribution (``explain``): method, features, baseline, target, sampling, batching."""

    method: Method = "occlusion"
    granularity: Granularity = "token"
    baseline: Baseline = Field(
        "auto", description="what replaces a feature; 'auto' is unk when the tokenizer has one, "
        "else a pad token that is not EOS, else the token of a single space"
    )
    target: Literal["reference", "generation", "both"] = Field(
        "both", description="what is attributed: the reference rule, the model's own generation, "
        "or both (one parquet, a 'target' column tells them apart)"
    )
    max_examples: int | None = Field(
        24, ge=1, description="examples attributed: a sample stratified by topic and source"
    )
    sample_seed: int = Field(
        0, ge=0, description="seeds the attribution sample; not the cell's seed, so every run of "
        "a study explains the same examples"
    )
    n_samples: int = Field(64, ge=1, description="permutations (shapley) or masks (lime, kernel_shap)")
    baseline_trials: int = Field(4, ge=1, description="trials for the 'sample' baseline")
    batch_size: int | None = Field(
        None, ge=1, description="perturbations per forward pass; default: sized by memory_budget_mb"
    )
    memory_budget_mb: float = Field(1024.0, gt=0, description="memory one batch of perturbations may use")
    reuse_prefix: bool = Field(True, description="reuse the unperturbed prefix's KV cache")
    heatmap: bool = Field(True, description="write <out stem>.html, a token heat-map per example")
    seed: int = Field(0, description="sampling methods and baselines; in a study, each cell's seed ('seeds') "
                      "replaces it")


class ComparisonConfig(Section):
    """Statistics across runs: concentration, paired tests, agreement, scale curves."""

    top_k: int = Field(5, ge=1, description="features counted by top-k share and top-k overlap")
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="significance level (after Holm)")
    fdr_q: float = Field(0.05, gt=0.0, lt=1.0, description="false discovery rate of the report-wide "
                         "Benjamini-Hochberg family every stated finding must survive")
    confidence: float = Field(0.95, gt=0.0, lt=1.0, description="level of bootstrap intervals")
    plateau_threshold: float = Field(
        0.01, ge=0.0, description="gain per decade of parameters (0-1 scale) below which a scale "
        "curve has plateaued"
    )
    bootstrap_samples: int = Field(1000, ge=10, description="resamples of examples per interval")
    permutations: int = Field(2000, ge=10, description="resamples of each permutation test")
    scale_findings: list[str] = Field(
        default_factory=lambda: ["rule_exec_accuracy", "chrf", "semantic_similarity", "gini", "gini_adjusted",
                                 "enrichment_NUMBER", "enrichment_RULE_ID"],
        description="scale curves whose trend and plateau tests enter the report-wide correction and "
        "may become a finding; other curves are drawn and tabled, never stated"
    )
    feature_level: Literal["auto", "token", "word"] = Field(
        "auto", description="features that concentration and category enrichment count: 'auto' is "
        "words (tokens merged by their character spans) when the runs compared differ in tokenizer, "
        "else tokens"
    )
    seed: int = 0


class ReportConfig(Section):
    """The HTML report: one self-contained file, figures embedded."""

    title: str = "tunelens study"
    heatmap_examples: int = Field(3, ge=0, description="examples shown as token heat-maps per run")
    heatmap_runs: int = Field(12, ge=1, description="most runs shown per token heat-map")
    scale_metrics: list[str] = Field(
        default_factory=lambda: ["rule_exec_accuracy", "chrf", "semantic_similarity", "gini"],
        description="metrics drawn as scale curves (those the study has)",
    )
    dpi: int = Field(110, ge=50, le=400, description="resolution of the PNG figures")
    max_findings: int = Field(
        12, ge=4, description="most bullets in the findings section; the rest stays in the tables"
    )


class TrackingConfig(Section):
    """MLflow tracking of training runs (SQLite file in the study folder unless ``uri`` is given)."""

    uri: str | None = Field(
        None, description="MLflow tracking URI; default: sqlite:///<study>/mlflow.db for runs at "
        "<study>/models/<run>, else mlflow.db beside the run folder"
    )
    experiment: str | None = Field(None, description="MLflow experiment; default: 'tunelens'")
    enabled: bool = True


@with_config(ConfigDict(extra="forbid"))
class ExtraCell(TypedDict):
    """A cell outside the full matrix; strategy and objective default to the study's first, and
    without a ``seed`` it is trained once per seed of the study.

    A typed dict rather than a model, so it stays the plain mapping the matrix code reads, while
    a wrong key or value fails with its key path (``extra_cells.1.strategy``).
    """

    model: str
    strategy: NotRequired[Strategy]
    objective: NotRequired[Objective]
    rag: NotRequired[bool]
    seed: NotRequired[Annotated[int, Field(ge=0, strict=True)]]
    prompt: NotRequired[str]


class PromptTemplate(Section):
    """A named prompt of the study's ``prompts`` axis (``prompt_templates: {name: ...}``); the
    built-ins are ``plain``, ``chat``, ``auto`` and ``few-shot-N``
    (:func:`tunelens.data.templates.named_prompt`)."""

    format: PromptFormat = Field(
        "auto", description="'auto' follows the model's prompt_format")
    instruction: str | None = Field(None, min_length=1, description="replaces the default "
                                    "instruction line; training and generation both use it")
    shots: int = Field(0, ge=0, le=16, description="fixed training examples placed before the "
                       "clause at generation and attribution (training renders none)")


class Study(Section):
    """A whole study: the matrix (models × strategies × objectives × rag × seeds) and every
    stage's settings."""

    name: str = "study"
    seeds: list[Annotated[int, Field(ge=0, strict=True)]] = Field(
        default_factory=lambda: [0],
        description="every cell is trained, generated, scored and attributed once per seed "
        "(training, generation and explanation seeds); replicates make the noise floor",
    )
    models: list[ModelSpec] = Field(default_factory=list)
    strategies: list[Strategy] = Field(default_factory=lambda: ["lora"])
    objectives: list[Objective] = Field(default_factory=lambda: ["instruct"])
    prompts: list[str] = Field(
        default_factory=list, description="named prompts, each a cell dimension like strategy "
        "(plain, chat, auto, few-shot-N or a prompt_templates name); empty: each model's "
        "prompt_format, no prompt dimension")
    prompt_templates: dict[str, PromptTemplate] = Field(default_factory=dict)
    extra_cells: list[ExtraCell] = Field(
        default_factory=list,
        description="cells outside the full matrix, e.g. {model: s, strategy: lora, "
        "objective: causal, rag: true, seed: 1}",
    )
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    rag: RagConfig = RagConfig()
    generation: GenerationConfig = GenerationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    explanation: ExplanationConfig = ExplanationConfig()
    checks: ChecksConfig = Field(ChecksConfig(), description="checks after explain (explain.checks_settings)")
    comparison: ComparisonConfig = ComparisonConfig()
    report: ReportConfig = ReportConfig()
    tracking: TrackingConfig = TrackingConfig()
    tune: TuneConfig = TuneConfig()

    @field_validator("strategies", "objectives", "seeds")
    @classmethod
    def _non_empty_unique(cls, value: list) -> list:
        if not value:
            raise ValueError("must list at least one entry")
        if len(set(value)) != len(value):
            raise ValueError("entries must be unique")
        return value

    @field_validator("prompts")
    @classmethod
    def _unique(cls, value: list) -> list:
        if len(set(value)) != len(value):
            raise ValueError("entries must be unique")
        return value

    def prompt(self, name: str):
        """The :class:`~tunelens.data.templates.NamedPrompt` ``name`` stands for in this study
        (its ``prompt_templates``, else a built-in); None for an unknown name."""
        from tunelens.data.templates import NamedPrompt, named_prompt

        defined = {k: NamedPrompt(**v.model_dump()) for k, v in self.prompt_templates.items()}
        return named_prompt(name, defined)

    @model_validator(mode="after")
    def _known_prompts(self) -> Study:
        from tunelens.data.templates import PROMPT_NAME

        for name in self.prompt_templates:
            if not PROMPT_NAME.fullmatch(name):
                raise ValueError(f"prompt_templates.{name}: a name is lower-case letters, digits "
                                 "and '-' (it becomes part of run names)")
        used = self.prompts + [e["prompt"] for e in self.extra_cells if "prompt" in e]
        for name in used:
            if self.prompt(name) is None:
                raise ValueError(f"prompts: unknown prompt '{name}' (built-in: plain, chat, auto, "
                                 "few-shot-N; or define it under prompt_templates)")
        return self

    @model_validator(mode="after")
    def _unique_model_names(self) -> Study:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must be unique, got {names}")
        for i, extra in enumerate(self.extra_cells):
            if extra["model"] not in names:
                raise ValueError(f"extra_cells.{i}.model: unknown model '{extra['model']}' "
                                 f"(models: {', '.join(names) or 'none'})")
        return self

    @model_validator(mode="after")
    def _grpo_on_prompts(self) -> Study:
        """Strategy grpo samples completions for prompts: a causal cell of it could only fail
        once the study is under way (tunelens.train.grpo), so it is refused here."""
        cells = [(s, o) for s in self.strategies for o in self.objectives]
        cells += [(e.get("strategy", self.strategies[0]), e.get("objective", self.objectives[0]))
                  for e in self.extra_cells]
        if (GRPO, "causal") in cells:
            raise ValueError("strategy grpo samples completions for prompts: it needs objective "
                             "'instruct', not 'causal' (run causal cells of other strategies as "
                             "extra_cells)")
        return self


def load_study(path: str | Path) -> Study:
    """Read and validate a study YAML; raise :class:`TunelensError` with the key path on error."""
    path = Path(path)
    text = read_text(path)  # one line naming the file (and line) if missing, a folder or not UTF-8
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        raise TunelensError(f"{path}{where}: malformed YAML" + (f" ({problem})" if problem else "")) \
            from None
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:
        # PyYAML's constructors raise these for values it cannot build (2024-99-99, !!int 'x').
        raise TunelensError(f"{path}: malformed YAML value ({printable(str(exc))})") from None
    if not isinstance(raw, dict):
        raise TunelensError(f"{path}: expected a mapping of sections at the top level, "
                            f"got {type(raw).__name__}")
    return parse_study(raw, origin=str(path))


def parse_study(raw: dict, origin: str = "study") -> Study:
    try:
        return Study.model_validate(raw)
    except ValidationError as exc:
        raise TunelensError(f"{origin}: {format_validation_error(exc)}") from None


S = TypeVar("S", bound=BaseModel)


def override(section: S, origin: str = "command line", **flags) -> S:
    """``section`` with the flags that were given (not None) laid over it, validated again.

    The one way CLI flags meet config: a verb reads its section from ``--config`` (or the
    defaults) and calls ``override(section, max_new_tokens=..., seed=...)``; a bad value fails
    with one line naming the flag's key.
    """
    updates = {k: v for k, v in flags.items() if v is not None}
    if not updates:
        return section
    try:
        return type(section).model_validate({**section.model_dump(), **updates})
    except ValidationError as exc:
        raise TunelensError(f"{origin}: {format_validation_error(exc)}") from None


def default_of(section: type[BaseModel], field: str) -> str:
    """``(default: X)`` for a help text, read from the schema so help never restates a default."""
    value = section.model_fields[field].get_default(call_default_factory=True)
    return f"(default: {value})"


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem is too many for the CLI: report the first, with its key path."""
    err = exc.errors()[0]
    loc = printable(".".join(str(p) for p in err["loc"]))
    if err["type"] == "extra_forbidden":
        return f"unknown key '{loc}'"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    if not loc and err["type"] == "value_error":  # a check across keys names its keys itself
        return str(err["ctx"]["error"]) + more
    return f"bad value for '{loc or '(top level)'}': {err['msg']}{more}"


def dump_study(study: Study) -> str:
    """The resolved study as YAML, every default filled in (written to ``<out>/study.yaml``)."""
    return yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False)
