"""The server's settings: limits, batching, security; and the ``NAME=PATH`` run list.

A served model is not a study cell, so these are not a section of ``study.yaml``; they are still
declared once, here (torch-free, so ``tunelens serve --help`` shows the defaults without loading
a model), and the CLI lays its flags over them with :func:`tunelens.config.override`'s rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from tunelens.config import Section
from tunelens.errors import TunelensError

LOOPBACK = "127.0.0.1"


class ServeConfig(Section):
    """How ``tunelens serve`` listens, batches and refuses."""

    host: str = Field(LOOPBACK, description="interface to bind; loopback unless asked otherwise")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port)")
    api_key_env: str | None = Field(None, description="environment variable holding the bearer key; "
                                    "without it no key is asked for")
    merge: bool = Field(False, description="merge adapters into their base at load (faster "
                        "decoding, more memory while merging) instead of serving them unmerged")
    max_body_bytes: int = Field(1_048_576, ge=1, description="larger request bodies get 413")
    max_tokens: int = Field(512, ge=1, description="largest max_tokens a request may ask (422 above)")
    default_max_tokens: int = Field(96, ge=1, description="max_tokens when a request gives none")
    rate_limit: int = Field(600, ge=0, description="requests per minute per key (per client "
                            "address without keys), as a token bucket; 0: no limit (429 above)")
    timeout_s: float = Field(120.0, gt=0, description="a request waiting or running longer gets "
                             "504; also how long shutdown waits for in-flight requests")
    batch_size: int = Field(32, ge=1, description="most requests decoded together")
    batch_wait_ms: float = Field(5.0, ge=0, description="a batch starts once no request arrived "
                                 "for this long (or 5% of the last batch's time, when longer)")
    max_explain_work: int = Field(4096, ge=1, description="most clause tokens x samples one "
                                  "/v1/explain request may cost (422 above)")


@dataclass(frozen=True)
class RunSpec:
    """One served model: the name clients put in ``model`` and the folder (or id) it loads."""

    name: str
    path: str


def parse_runs(default: str | None, named: list[str]) -> list[RunSpec]:
    """The runs to serve: the positional run (named after its folder) and each ``NAME=PATH``."""
    specs = []
    if default:
        specs.append(RunSpec(Path(default).name or default, default))
    for item in named:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise TunelensError(f"--run {item!r}: expected NAME=PATH")
        specs.append(RunSpec(name.strip(), path.strip()))
    if not specs:
        raise TunelensError("nothing to serve: give a RUN folder or --run NAME=PATH")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise TunelensError(f"model name(s) served twice: {', '.join(twice)}; rename with NAME=PATH")
    return specs
