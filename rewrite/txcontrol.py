"""Which transaction-control statements a client's SQL text holds: a sans-IO classifier for the hot path.

The split pins a transaction to one target, so the proxy must know where transactions begin and end *as the
client sends them*: ReadyForQuery comes too late for pipelined statements. Only the first keywords of each
statement matter (after whitespace and comments), so this reads a few words, never parses: no sqlglot here.

Effects (what the statement does to the session's transaction state when it runs):

- BEGIN: BEGIN, START TRANSACTION (inside a transaction they only warn: still one transaction);
- END: COMMIT, END, ROLLBACK, ABORT (not ROLLBACK TO SAVEPOINT, not COMMIT/ROLLBACK PREPARED, which act on
  another, prepared transaction), and PREPARE TRANSACTION (the session leaves the transaction);
- CHAIN: COMMIT/ROLLBACK ... AND CHAIN: one transaction ends, the next one starts at once;
- NONE: everything else (savepoints, SET TRANSACTION, PREPARE name AS ..., queries).
"""

from __future__ import annotations

import re

NONE, BEGIN, END, CHAIN = 0, 1, 2, 3

_LEADING = frozenset(("BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "PREPARE"))
_WORD = re.compile(r"[A-Za-z_][A-Za-z_0-9$]*")
_SPACE = re.compile(r"\s*")
# the characters that can open a quote or a comment, or end a statement
_SPECIAL = re.compile(r"""[';"$/-]""")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9\x80-\U0010ffff]*)?\$")
_E_STRING = re.compile(r"(?:[^'\\]|\\.|'')*'", re.DOTALL)


def _skip_comment(sql: str, pos: int) -> int:
    """Past a comment starting at `pos` (or `pos` itself when none starts there). /* */ nests in PostgreSQL."""
    if sql.startswith("--", pos):
        newline = sql.find("\n", pos)
        return len(sql) if newline < 0 else newline + 1
    if sql.startswith("/*", pos):
        depth, pos = 1, pos + 2
        while depth:
            close = sql.find("*/", pos)
            if close < 0:
                return len(sql)
            opened = sql.find("/*", pos, close)
            if opened >= 0:
                depth, pos = depth + 1, opened + 2
            else:
                depth, pos = depth - 1, close + 2
        return pos
    return pos


def _words(sql: str, pos: int, limit: int) -> list[str]:
    """Up to `limit` leading keywords from `pos`, upper-cased; stops at anything that is not a word."""
    words: list[str] = []
    n = len(sql)
    while len(words) < limit and pos < n:
        pos = _SPACE.match(sql, pos).end()  # type: ignore[union-attr]
        after = _skip_comment(sql, pos)
        if after != pos:
            pos = after
            continue
        match = _WORD.match(sql, pos)
        if match is None:
            break
        words.append(match.group().upper())
        pos = match.end()
    return words


def statement_effect(sql: str, pos: int = 0) -> int:
    """The effect of the statement starting at `pos` (its first keywords only).

    >>> [statement_effect(s) for s in ("BEGIN", "start transaction read only", "/* x */ -- y\\n commit",
    ...  "ROLLBACK TO SAVEPOINT a", "rollback work to a", "COMMIT PREPARED 'x'", "PREPARE TRANSACTION 'x'",
    ...  "PREPARE q AS SELECT 1", "commit and chain", "ROLLBACK AND NO CHAIN", "end", "abort", "SAVEPOINT a",
    ...  "SELECT 1", "begin_x", "")]
    [1, 1, 2, 0, 0, 0, 2, 0, 3, 2, 2, 2, 0, 0, 0, 0]
    """
    match = _WORD.match(sql, pos)  # the common case: a statement that starts with its keyword
    if match is not None:
        if match.group().upper() not in _LEADING:
            return NONE
    else:
        first = _words(sql, pos, 1)
        if not first or first[0] not in _LEADING:
            return NONE
    words = _words(sql, pos, 5)
    head = words[0]
    rest = words[1:]
    if rest and rest[0] in ("WORK", "TRANSACTION") and head not in ("START", "PREPARE"):
        rest = rest[1:]
    if head == "BEGIN":
        return BEGIN
    if head == "START":
        return BEGIN if rest[:1] == ["TRANSACTION"] else NONE
    if head == "PREPARE":
        return END if rest[:1] == ["TRANSACTION"] else NONE
    if rest[:1] == ["PREPARED"] or rest[:1] == ["TO"]:  # another (prepared) transaction, or a savepoint
        return NONE
    if rest[:2] == ["AND", "CHAIN"]:
        return CHAIN
    return END


def statement_starts(sql: str) -> list[int]:
    """Where each statement of a (multi-statement) simple Query starts: at the top-level semicolons, with
    string literals, quoted identifiers, dollar quotes and comments stepped over.

    >>> sql = "BEGIN; SELECT ';' AS \\"a;b\\", $$;$$ /* ; */; -- ;\\nCOMMIT"
    >>> [statement_effect(sql, i) for i in statement_starts(sql)]
    [1, 0, 2]
    """
    starts = [0]
    pos, n = 0, len(sql)
    while True:
        match = _SPECIAL.search(sql, pos)
        if match is None:
            break
        pos = match.start()
        char = sql[pos]
        if char == ";":
            pos += 1
            starts.append(pos)
        elif char == "'":
            if pos > 0 and sql[pos - 1] in "eE" and (pos < 2 or not (sql[pos - 2].isalnum() or sql[pos - 2] == "_")):
                end = _E_STRING.match(sql, pos + 1)
                pos = end.end() if end is not None else n
            else:
                pos = _closing(sql, pos + 1, "'")
        elif char == '"':
            pos = _closing(sql, pos + 1, '"')
        elif char == "$":
            before = sql[pos - 1] if pos else " "
            tag = None if (before.isalnum() or before in "_$") else _DOLLAR_TAG.match(sql, pos)
            if tag is None:
                pos += 1
            else:
                close = sql.find(tag.group(), tag.end())
                pos = n if close < 0 else close + len(tag.group())
        else:  # '-' or '/': a comment, or an operator
            after = _skip_comment(sql, pos)
            pos = after if after != pos else pos + 1
    return [start for start in starts if start < n and sql[start:].strip()]


def _closing(sql: str, pos: int, quote: str) -> int:
    """Past the closing quote (a doubled quote is part of the text)."""
    n = len(sql)
    while True:
        close = sql.find(quote, pos)
        if close < 0:
            return n
        if sql.startswith(quote, close + 1):
            pos = close + 2
            continue
        return close + 1


def query_effects(sql: str) -> list[int]:
    """The effect of each statement of a simple Query, in order (one entry per statement).

    Most Queries hold one statement: then only its first keywords are read.

    >>> query_effects("SELECT 1"), query_effects("BEGIN; SELECT 1; COMMIT;"), query_effects("select ';begin'")
    ([0], [1, 0, 2], [0])
    """
    semicolon = sql.find(";")
    if semicolon < 0 or not sql[semicolon:].strip("; \t\r\n"):
        return [statement_effect(sql)]
    return [statement_effect(sql, start) for start in statement_starts(sql)]
