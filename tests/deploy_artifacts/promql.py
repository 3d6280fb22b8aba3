"""A small PromQL reader: enough to find which series an expression selects and how it uses them.

promtool is not on this machine and no PromQL parser is among the project's dependencies, so the artifacts'
expressions are tokenized here: brackets must balance, every function must be a real PromQL function, and each
metric selector is reported with its label matchers, whether a range `[..]` follows it, and the innermost
function it sits in (so `rate(gauge[5m])` or a bare counter can be caught).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FUNCTIONS = frozenset({
    # aggregations
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio",
    # functions
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "day_of_month",
    "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp", "floor", "histogram_avg",
    "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev", "histogram_stdvar",
    "histogram_sum", "hour", "idelta", "increase", "irate", "label_join", "label_replace", "ln", "log2", "log10",
    "minute", "month", "predict_linear", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc",
    "sort_by_label", "sort_by_label_desc", "sqrt", "time", "timestamp", "vector", "year", "avg_over_time",
    "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "quantile_over_time",
    "stddev_over_time", "stdvar_over_time", "last_over_time", "present_over_time", "mad_over_time",
    "acos", "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh", "sin", "sinh", "tan", "tanh", "deg", "rad",
    "pi",
})
AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                          "bottomk", "topk", "quantile", "limitk", "limit_ratio"})
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
OTHER_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})

_TOKEN = re.compile(
    r"""
     (?P<ws>\s+)
    |(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    |(?P<duration>(?:\d+(?:ms|[smhdwy]))+)
    |(?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    |(?P<variable>\$\{\w+\}|\$\w+)
    |(?P<ident>[a-zA-Z_][a-zA-Z0-9_:]*)
    |(?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=,(){}\[\]:@])
    """,
    re.VERBOSE,
)
_MATCH_OPS = ("=", "!=", "=~", "!~")


class PromQLError(ValueError):
    """An expression this reader cannot accept; the message says where."""


@dataclass(frozen=True, slots=True)
class MetricRef:
    name: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, value)
    has_range: bool  # a `[duration]` follows the selector: it is a range vector
    function: str | None  # innermost enclosing function or aggregation


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str
    pos: int


def tokenize(expr: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise PromQLError(f"unexpected {expr[pos]!r} at {pos} in {expr!r}")
        if match.lastgroup != "ws":
            tokens.append(Token(match.lastgroup or "", match.group(), pos))
        pos = match.end()
    return tokens


def _unquote(text: str) -> str:
    return text[1:-1] if text[0] == "`" else re.sub(r"\\(.)", r"\1", text[1:-1])


class _Reader:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.tokens = tokenize(expr)
        self.i = 0

    def peek(self, ahead: int = 0) -> Token | None:
        j = self.i + ahead
        return self.tokens[j] if j < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise PromQLError(f"unexpected end of {self.expr!r}")
        self.i += 1
        return token

    def expect(self, text: str) -> None:
        token = self.take()
        if token.text != text:
            raise PromQLError(f"expected {text!r} at {token.pos} in {self.expr!r}, got {token.text!r}")

    def label_list(self) -> None:
        self.expect("(")
        while (token := self.take()).text != ")":
            if token.kind != "ident" and token.text != ",":
                raise PromQLError(f"bad label list at {token.pos} in {self.expr!r}")

    def matchers(self) -> tuple[tuple[str, str, str], ...]:
        self.expect("{")
        found = []
        while (token := self.take()).text != "}":
            if token.text == ",":
                continue
            op, value = self.take(), self.take()
            if token.kind != "ident" or op.text not in _MATCH_OPS or value.kind != "string":
                raise PromQLError(f"bad label matcher at {token.pos} in {self.expr!r}")
            found.append((token.text, op.text, _unquote(value.text)))
        return tuple(found)

    def skip_range(self) -> None:
        self.expect("[")
        while (token := self.take()).text != "]":
            if token.kind not in ("duration", "variable", "number") and token.text != ":":
                raise PromQLError(f"bad range at {token.pos} in {self.expr!r}")


def references(expr: str) -> list[MetricRef]:
    """Every metric selector in `expr`, in order. Raises PromQLError on what is not PromQL."""
    reader = _Reader(expr)
    stack: list[str | None] = []  # one entry per open '(': the function it calls, None for grouping
    pending: str | None = None
    refs: list[MetricRef] = []
    while (token := reader.peek()) is not None:
        following = reader.peek(1)
        if token.kind == "ident" and token.text.lower() in LABEL_LIST_KEYWORDS:
            reader.take()
            if reader.peek() is not None and reader.peek().text == "(":
                reader.label_list()
        elif token.kind == "ident" and token.text.lower() in OTHER_KEYWORDS:
            reader.take()
        elif token.kind == "ident" and following is not None and (
            following.text == "(" or (token.text in AGGREGATIONS and following.text in ("by", "without"))
        ):
            if token.text not in FUNCTIONS:
                raise PromQLError(f"unknown function {token.text!r} in {expr!r}")
            pending = reader.take().text
        elif token.kind == "ident":
            reader.take()
            matchers = reader.matchers() if following is not None and following.text == "{" else ()
            after = reader.peek()
            function = next((f for f in reversed(stack) if f is not None), None)
            refs.append(MetricRef(token.text, matchers, after is not None and after.text == "[", function))
        elif token.text == "(":
            reader.take()
            stack.append(pending)
            pending = None
        elif token.text == ")":
            reader.take()
            if not stack:
                raise PromQLError(f"unbalanced ')' at {token.pos} in {expr!r}")
            stack.pop()
        elif token.text == "[":
            reader.skip_range()
        elif token.text in ("{", "}", "]") or token.kind == "variable":
            raise PromQLError(f"unexpected {token.text!r} at {token.pos} in {expr!r}")
        else:
            reader.take()
    if stack:
        raise PromQLError(f"unclosed '(' in {expr!r}")
    return refs
