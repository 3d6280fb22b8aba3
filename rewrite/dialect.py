"""A sqlglot dialect for PostgreSQL + pgvector: every distance operator is its own node and prints back exactly.

Stock sqlglot 30.x reads `a <=> b` as NULL-safe equality (and writes `IS NOT DISTINCT FROM`), reads `a <%> b` as
`a < %s > b`, rejects `<#>`, `<+>`, `<~>`, and binds `<->` like `*`. Here each of the six operators is a Binary
node of its own, parsed at PostgreSQL's precedence for "any other operator": tighter than comparisons, `IS`,
`NOT`, `AND`; looser than `+ - * /`; left-associative at the level of `||`. The function forms are nodes too,
so analysis never has to look at function names, and casts to the vector types print in the `x::type` form.

>>> parse_one("SELECT a <=> b < 0.5").sql(dialect=PgVector)
'SELECT a <=> b < 0.5'
>>> type(parse_one("SELECT emb <-> $1 + 1").selects[0]).__name__
'L2Distance'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from sqlglot import TokenType, exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.generators.postgres import PostgresGenerator
from sqlglot.parsers.postgres import PostgresParser

from pgcutover.core.enums import Metric

# TokenType is a closed Enum, so all six operators share sqlglot's own "distance" token type and the node is
# chosen by the token's text. Postgres' stock dialect uses LR_ARROW only for `<->`, which we take over.
VECTOR_OP = TokenType.LR_ARROW


class VectorDistance(exp.Expression, exp.Binary):
    """Base of the six pgvector distance operators."""

    operator: ClassVar[str] = ""
    metric: ClassVar[str] = ""  # a core.enums.Metric


class L2Distance(VectorDistance):
    operator = "<->"
    metric = Metric.L2


class CosineDistance(VectorDistance):
    operator = "<=>"
    metric = Metric.COSINE


class NegativeInnerProduct(VectorDistance):
    operator = "<#>"
    metric = Metric.IP


class L1Distance(VectorDistance):
    operator = "<+>"
    metric = Metric.L1


class HammingDistance(VectorDistance):
    operator = "<~>"
    metric = Metric.HAMMING


class JaccardDistance(VectorDistance):
    operator = "<%>"
    metric = Metric.JACCARD


class VectorDistanceFunc(exp.Expression, exp.Func):
    """Base of the function forms, e.g. `l2_distance(a, b)`."""

    arg_types: ClassVar[dict[str, bool]] = {"this": True, "expression": True}
    function: ClassVar[str] = ""
    metric: ClassVar[str] = ""  # a core.enums.Metric


class L2DistanceFunc(VectorDistanceFunc):
    function = "l2_distance"
    metric = Metric.L2


class CosineDistanceFunc(VectorDistanceFunc):
    function = "cosine_distance"
    metric = Metric.COSINE


class InnerProductFunc(VectorDistanceFunc):
    # Positive inner product, unlike the `<#>` operator which is its negation.
    function = "inner_product"
    metric = Metric.IP_POSITIVE


class L1DistanceFunc(VectorDistanceFunc):
    function = "l1_distance"
    metric = Metric.L1


class HammingDistanceFunc(VectorDistanceFunc):
    function = "hamming_distance"
    metric = Metric.HAMMING


class JaccardDistanceFunc(VectorDistanceFunc):
    function = "jaccard_distance"
    metric = Metric.JACCARD


OPERATOR_NODES: dict[str, type[VectorDistance]] = {
    cls.operator: cls
    for cls in (L2Distance, CosineDistance, NegativeInnerProduct, L1Distance, HammingDistance, JaccardDistance)
}
FUNCTION_NODES: dict[str, type[VectorDistanceFunc]] = {
    cls.function: cls
    for cls in (
        L2DistanceFunc, CosineDistanceFunc, InnerProductFunc, L1DistanceFunc, HammingDistanceFunc,
        JaccardDistanceFunc,
    )
}
DISTANCE_NODES: tuple[type[exp.Expression], ...] = (VectorDistance, VectorDistanceFunc)

# Type names whose casts print as `x::type`; user-defined types (halfvec, sparsevec, ruvector...) included.
_CAST_TYPES = (exp.DType.VECTOR, exp.DType.BIT, exp.DType.USERDEFINED)
# Operands that need no parentheses before `::` (which binds tighter than anything but `.`).
_CAST_ATOMS = (exp.Column, exp.Parameter, exp.Placeholder, exp.Paren, exp.Subquery, exp.Cast, exp.Func, exp.Null)


def distance_operator(node: exp.Expression) -> str:
    """The SQL spelling of a distance node: the operator, or the function name."""
    if isinstance(node, VectorDistance):
        return node.operator
    if isinstance(node, VectorDistanceFunc):
        return node.function
    raise TypeError(f"not a distance: {type(node).__name__}")


def _wrap_cast_operand(operand: exp.Expression) -> exp.Expression:
    if isinstance(operand, _CAST_ATOMS):
        return operand
    if isinstance(operand, exp.Literal) and (operand.is_string or not operand.this.startswith("-")):
        return operand
    return exp.Paren(this=operand)


class PgVectorParser(PostgresParser):
    FUNCTIONS: ClassVar = {
        **PostgresParser.FUNCTIONS,
        **{name.upper(): cls.from_arg_list for name, cls in FUNCTION_NODES.items()},
    }
    # `<->` is ours (Postgres' "other operator" level), and `<=>` is never NULL-safe equality here.
    FACTOR: ClassVar = {k: v for k, v in PostgresParser.FACTOR.items() if k is not VECTOR_OP}
    EQUALITY: ClassVar = {k: v for k, v in PostgresParser.EQUALITY.items() if k is not TokenType.NULLSAFE_EQ}

    def _parse_bitwise(self) -> exp.Expr | None:
        # Same loop as sqlglot's Parser._parse_bitwise (the level of `||`, `&`, `|`, `#`, `<<`, JSON arrows),
        # plus the pgvector operators, so that all of them share one left-associative precedence level the
        # way PostgreSQL treats "any other operator".
        this = self._parse_term()
        while True:
            if self._match(VECTOR_OP):
                node = OPERATOR_NODES.get(self._prev.text)
                if node is None:
                    self.raise_error(f"unknown vector operator {self._prev.text!r}")
                    return this
                this = self.expression(node(this=this, expression=self._parse_term()))
            elif self._match_set(self.BITWISE):
                this = self.expression(
                    self.BITWISE[self._prev.token_type](this=this, expression=self._parse_term())
                )
            elif self.dialect.DPIPE_IS_STRING_CONCAT and self._match(TokenType.DPIPE):
                this = self.expression(
                    exp.DPipe(this=this, expression=self._parse_term(), safe=not self.dialect.STRICT_STRING_CONCAT)
                )
            elif self._match(TokenType.DQMARK):
                this = self.expression(exp.Coalesce(this=this, expressions=[self._parse_term()]))
            elif self._match_pair(TokenType.LT, TokenType.LT):
                this = self.expression(exp.BitwiseLeftShift(this=this, expression=self._parse_term()))
            elif self._match_pair(TokenType.GT, TokenType.GT):
                this = self.expression(exp.BitwiseRightShift(this=this, expression=self._parse_term()))
            elif self.JSON_OPERATORS and self._match_set(self.JSON_OPERATORS):
                this = self.JSON_OPERATORS[self._prev.token_type](self, this, self._parse_term())
            else:
                break
        return this


def _binary_sql(operator: str) -> Callable[[PostgresGenerator, exp.Binary], str]:
    return lambda gen, node: gen.binary(node, operator)


def _function_sql(name: str) -> Callable[[PostgresGenerator, exp.Expr], str]:
    return lambda gen, node: f"{name}({gen.sql(node, 'this')}, {gen.sql(node, 'expression')})"


class PgVectorGenerator(PostgresGenerator):
    TRANSFORMS: ClassVar = {
        **PostgresGenerator.TRANSFORMS,
        **{cls: _binary_sql(op) for op, cls in OPERATOR_NODES.items()},
        **{cls: _function_sql(name) for name, cls in FUNCTION_NODES.items()},
    }

    def cast_sql(self, expression: exp.Cast, safe_prefix: str | None = None) -> str:
        to = expression.args.get("to")
        plain = not any(expression.args.get(k) for k in ("format", "default", "action", "safe"))
        if plain and isinstance(to, exp.DataType) and to.this in _CAST_TYPES:
            return f"{self.sql(_wrap_cast_operand(expression.this))}::{self.sql(to)}"
        return super().cast_sql(expression, safe_prefix=safe_prefix)

    def datatype_sql(self, expression: exp.DataType) -> str:
        if expression.this in (exp.DType.VECTOR, exp.DType.BIT):
            params = self.expressions(expression, flat=True)
            name = expression.this.value.lower()
            return f"{name}({params})" if params else name
        return super().datatype_sql(expression)


class PgVector(Postgres):
    class Tokenizer(Postgres.Tokenizer):
        KEYWORDS: ClassVar = {
            **Postgres.Tokenizer.KEYWORDS,
            **dict.fromkeys(OPERATOR_NODES, VECTOR_OP),
        }

    Parser = PgVectorParser
    Generator = PgVectorGenerator


def parse(sql: str) -> list[exp.Expr]:
    """All statements of `sql` (sqlglot ParseError/TokenError propagate)."""
    import sqlglot

    return [e for e in sqlglot.parse(sql, dialect=PgVector) if e is not None]


def parse_one(sql: str) -> exp.Expr:
    import sqlglot

    return sqlglot.parse_one(sql, dialect=PgVector)


def to_sql(expression: exp.Expr) -> str:
    """PostgreSQL text for `expression`; raises on anything the generator cannot express."""
    from sqlglot.errors import ErrorLevel

    return expression.sql(dialect=PgVector, unsupported_level=ErrorLevel.RAISE)


def build_type(type_sql: str) -> exp.DataType:
    """A DataType from config text such as 'vector', 'halfvec(3072)' or 'ruvector_new.vector'."""
    return exp.DataType.build(type_sql, dialect=PgVector, udt=True)
