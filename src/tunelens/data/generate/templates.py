"""Versioned Jinja prompt templates for data generation (bundled ones and a user's own files).

Stored like the judge's templates (``evaluate/judge_templates/<version>.txt``): one file per
version, ``templates/<id>/<version>.j2``, and every generated row records the template's id,
version and the SHA-256 of its text, so a changed prompt never passes for the old one. Jinja
(rather than ``string.Template``) because generation prompts branch (an optional topic) and
users write their own; ``StrictUndefined`` plus an up-front check of the variables a template
uses turn a typo into one line before any model is asked.

A template opens with a header in a Jinja comment::

    {#-
    description: write the machine-checkable rule for a clause
    output: completion        # the row field the reply fills: prompt, completion or both
    needs: clause             # seed fields it needs; seeds without them are skipped for it
    version: v1               # optional for a user's file (default: its file name)
    -#}

Variables: ``clause``, ``rule``, ``topic``, ``source``, ``seed_id``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2
from jinja2 import meta

from tunelens.errors import TunelensError

VARIABLES = ("clause", "rule", "topic", "source", "seed_id")
OUTPUTS = ("prompt", "completion", "both")
_HEADER = re.compile(r"\A\s*\{#-?(.*?)-?#\}", re.S)
_FIELD = re.compile(r"^\s*(\w+)\s*:\s*(.*?)\s*(?:#.*)?$")
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False,
                          autoescape=False)


@dataclass(frozen=True)
class PromptTemplate:
    id: str
    version: str
    text: str
    output: str
    needs: tuple[str, ...]
    description: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def identity(self) -> dict:
        """What a generated row records about its template (provenance)."""
        return {"id": self.id, "version": self.version, "sha256": self.sha256}

    def applies_to(self, seed: dict) -> bool:
        """The seed has what the template needs, and the half of the row the reply does not fill
        (a reply that writes the clause takes the seed's rule as the completion)."""
        taken = {"prompt": ("rule",), "completion": ("clause",), "both": ()}[self.output]
        return all(seed.get(name) for name in (*self.needs, *taken))

    def render(self, seed: dict) -> str:
        values = {name: seed.get(name) or "" for name in VARIABLES}
        try:
            return _ENV.from_string(self.text).render(**values).strip()
        except jinja2.TemplateError as exc:
            raise TunelensError(f"template {self.id} {self.version}: {exc}") from None


def bundled_ids() -> list[str]:
    folder = resources.files("tunelens.data.generate").joinpath("templates")
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("_"))


def _latest(template_id: str) -> tuple[str, str]:
    folder = resources.files("tunelens.data.generate").joinpath("templates", template_id)
    versions = sorted((p.name[:-3] for p in folder.iterdir() if p.name.endswith(".j2")),
                      key=lambda v: [int(d) for d in re.findall(r"\d+", v)] or [0])
    return versions[-1], folder.joinpath(f"{versions[-1]}.j2").read_text(encoding="utf-8")


def load_template(ref: str) -> PromptTemplate:
    """A bundled template by id (``rule_for_clause``, or ``rule_for_clause@v1``) or a ``.j2`` file."""
    name, _, version = ref.partition("@")
    if name in bundled_ids():
        if version:
            path = resources.files("tunelens.data.generate").joinpath("templates", name,
                                                                       f"{version}.j2")
            if not path.is_file():
                raise TunelensError(f"template {name} has no version {version}")
            text = path.read_text(encoding="utf-8")
        else:
            version, text = _latest(name)
        return parse_template(name, version, text, f"bundled template {name}")
    path = Path(ref)
    if not path.is_file():
        raise TunelensError(f"template '{ref}': neither a bundled template "
                            f"({', '.join(bundled_ids())}) nor a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TunelensError(f"{path}: cannot read the template ({exc})") from None
    return parse_template(path.stem, None, text, str(path))


def parse_template(template_id: str, version: str | None, text: str, where: str) -> PromptTemplate:
    """Read the header and refuse unknown variables or syntax errors, each in one line."""
    header = _HEADER.match(text)
    if header is None:
        raise TunelensError(f"{where}: no header comment ({{#- output: ... needs: ... -#}}) "
                            "at the start of the template")
    fields = {m.group(1): m.group(2) for line in header.group(1).splitlines()
              if (m := _FIELD.match(line))}
    output = fields.get("output", "")
    if output not in OUTPUTS:
        raise TunelensError(f"{where}: header 'output' must be one of {', '.join(OUTPUTS)}, "
                            f"got '{output}'")
    needs = tuple(fields.get("needs", "").replace(",", " ").split())
    try:
        used = meta.find_undeclared_variables(_ENV.parse(text))
    except jinja2.TemplateSyntaxError as exc:
        raise TunelensError(f"{where}:{exc.lineno}: template syntax error ({exc.message})") from None
    unknown = sorted((used | set(needs)) - set(VARIABLES))
    if unknown:
        raise TunelensError(f"{where}: undefined variable(s) {', '.join(unknown)} (a template "
                            f"can use {', '.join(VARIABLES)})")
    return PromptTemplate(template_id, version or fields.get("version") or "file", text, output,
                          needs, fields.get("description", ""))
