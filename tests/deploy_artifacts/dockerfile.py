"""A Dockerfile reader and a .dockerignore matcher, for checking deploy/docker without a Docker engine.

Docker cannot build on this machine, so the tests read the Dockerfile the way BuildKit does as far as the checks
need: parser directives, comments, line continuations, `--flag=value` options, JSON (exec) and shell forms, and
ARG defaults declared before the first FROM.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

# The instructions of the Dockerfile reference (MAINTAINER is deprecated and refused here on purpose).
KNOWN = frozenset({
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL", "ONBUILD", "RUN",
    "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
})
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z]+)\s*=\s*(.*)$")
_FLAG = re.compile(r"^--([a-z-]+)(?:=(\S*))?$")


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    flags: dict[str, str]
    value: str  # the rest after the flags, continuations joined
    line: int

    @property
    def exec_form(self) -> list[str] | None:
        """The JSON array of CMD/ENTRYPOINT/RUN/HEALTHCHECK CMD, or None for the shell form."""
        text = self.value.removeprefix("CMD").strip() if self.keyword == "HEALTHCHECK" else self.value
        if not text.startswith("["):
            return None
        parsed = json.loads(text)
        if not isinstance(parsed, list) or not all(isinstance(part, str) for part in parsed):
            raise ValueError(f"line {self.line}: exec form must be a JSON array of strings")
        return parsed


@dataclass(frozen=True, slots=True)
class Dockerfile:
    directives: dict[str, str]
    instructions: list[Instruction]

    def stages(self) -> list[list[Instruction]]:
        """Instructions grouped by FROM; each group starts with its FROM."""
        groups: list[list[Instruction]] = []
        for ins in self.instructions:
            if ins.keyword == "FROM":
                groups.append([ins])
            elif groups:
                groups[-1].append(ins)
        return groups

    def global_args(self) -> dict[str, str]:
        """ARGs before the first FROM, with their defaults: the only variables FROM lines may use."""
        found = {}
        for ins in self.instructions:
            if ins.keyword == "FROM":
                break
            if ins.keyword == "ARG":
                name, _, default = ins.value.partition("=")
                found[name.strip()] = default.strip()
        return found


def _split_flags(keyword: str, text: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    if keyword not in ("FROM", "COPY", "ADD", "RUN", "HEALTHCHECK"):
        return flags, text
    rest = text
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        match = _FLAG.match(word)
        if match is None:
            raise ValueError(f"bad flag {word!r}")
        flags[match.group(1)] = match.group(2) or ""
        rest = rest.lstrip()
    return flags, rest


def parse(text: str) -> Dockerfile:
    directives: dict[str, str] = {}
    instructions: list[Instruction] = []
    lines = text.splitlines()
    in_header = True
    i = 0
    while i < len(lines):
        raw, start = lines[i], i + 1
        i += 1
        stripped = raw.strip()
        if in_header and (match := _DIRECTIVE.match(stripped)):
            directives[match.group(1).lower()] = match.group(2)
            continue
        in_header = False
        if not stripped or stripped.startswith("#"):
            continue
        parts = [stripped]
        while parts[-1].endswith("\\"):
            parts[-1] = parts[-1][:-1].rstrip()
            # Comment and empty lines inside a continuation are dropped, as Docker does.
            while i < len(lines) and (not lines[i].strip() or lines[i].strip().startswith("#")):
                i += 1
            if i == len(lines):
                raise ValueError(f"line {start}: continuation runs past the end of the file")
            parts.append(lines[i].strip())
            i += 1
        keyword, _, rest = " ".join(parts).partition(" ")
        flags, value = _split_flags(keyword.upper(), rest.strip())
        instructions.append(Instruction(keyword.upper(), flags, value, start))
    return Dockerfile(directives, instructions)


def expand(text: str, variables: dict[str, str]) -> str:
    """${NAME} and $NAME from `variables`; an unknown name is an error rather than an empty string."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise KeyError(f"undefined build variable {name!r} in {text!r}")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, text)


def copy_sources(ins: Instruction) -> list[str]:
    """The source paths of a COPY/ADD (all words but the last)."""
    words = ins.exec_form if ins.value.startswith("[") else shlex.split(ins.value)
    if words is None or len(words) < 2:
        raise ValueError(f"line {ins.line}: {ins.keyword} needs at least one source and a destination")
    return words[:-1]


class DockerIgnore:
    """Docker's .dockerignore rules: the last matching pattern wins, `!` re-includes, a pattern that matches a
    folder matches everything in it, `*` stays within one path element and `**` spans any number of them."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            exclude = not line.startswith("!")
            pattern = line.lstrip("!").strip().strip("/")
            self.rules.append((exclude, re.compile(self._regex(pattern))))

    @staticmethod
    def _regex(pattern: str) -> str:
        out, i = [], 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
            elif pattern.startswith("**", i):
                out.append(".*")
                i += 2
            elif pattern[i] == "*":
                out.append("[^/]*")
                i += 1
            elif pattern[i] == "?":
                out.append("[^/]")
                i += 1
            else:
                out.append(re.escape(pattern[i]))
                i += 1
        return "^" + "".join(out) + "$"

    def excluded(self, path: str) -> bool:
        parts = path.strip("/").split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        verdict = False
        for exclude, regex in self.rules:
            if any(regex.match(prefix) for prefix in prefixes):
                verdict = exclude
        return verdict

    def files_sent(self, root: Path, under: str) -> list[str]:
        """Files below `under` (relative to the build context `root`) that reach the build."""
        base = root / under
        paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        return [rel for p in paths if not self.excluded(rel := p.relative_to(root).as_posix())]
