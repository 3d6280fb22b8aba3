"""Names and string constants spliced into SQL text: PostgreSQL's own quote_ident and quote_literal, once.

Most SQL the proxy sends is rendered by sqlglot from a parsed tree (values as typed parameters); these are for
the statements written as text around config names (catalog lookups, the fallback store's loads, deploy's DDL).
Identifiers are always quoted, so config names keep their case and may hold dots, spaces or quotes. String
constants follow PostgreSQL's quote_literal: a backslash makes an E'' constant, so the value reads back the same
whatever standard_conforming_strings says (a renderer that assumes the setting would not).
"""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """Always-quoted identifier, exactly as PostgreSQL's quote_ident would quote it.

    >>> print(quote_ident('Items "v2" old'))
    "Items ""v2"" old"
    >>> quote_ident("")
    Traceback (most recent call last):
    ...
    ValueError: invalid identifier ''
    """
    if not name or "\x00" in name:
        raise ValueError(f"invalid identifier {name!r}")
    return '"' + name.replace('"', '""') + '"'


def quote_table(table: str) -> str:
    """A config table name, "name" or "schema.name", as SQL text (the last dot separates the schema).

    >>> quote_table("public.Items"), quote_table("items")
    ('"public"."Items"', '"items"')
    """
    schema, _, name = table.rpartition(".")
    return f"{quote_ident(schema)}.{quote_ident(name)}" if schema else quote_ident(name)


def quote_literal(value: str) -> str:
    r"""A string constant that reads back as `value` whatever standard_conforming_strings says (the algorithm of
    PostgreSQL's quote_literal).

    >>> print(quote_literal("it's"), quote_literal("a\\b"))
    'it''s' E'a\\b'
    """
    if "\x00" in value:
        raise ValueError("a string constant cannot contain NUL")
    body = value.replace("'", "''")
    if "\\" in body:
        return "E'" + body.replace("\\", "\\\\") + "'"
    return "'" + body + "'"
