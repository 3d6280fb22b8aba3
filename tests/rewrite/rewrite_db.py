"""Connections to the rewrite tests' database: vectors travel as text, so rows compare as plain tuples."""

from __future__ import annotations

import asyncpg


async def connect(dsn: str, search_path: tuple[str, ...] = ("public",)) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, server_settings={"search_path": ", ".join(search_path)})
    try:
        for type_name in ("vector", "halfvec"):
            await conn.set_type_codec(type_name, encoder=str, decoder=str, format="text", schema="public")
    except ValueError:
        pass  # the extension is created right after the first connection
    return conn
