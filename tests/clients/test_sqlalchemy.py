"""SQLAlchemy 2 ORM + pgvector.sqlalchemy through the proxy, with psycopg 3 and with asyncpg, in the three
scenarios of tests/clients/conftest.py. Both drivers bind the vector as a parameter of the extended protocol;
asyncpg prepares every statement."""

from __future__ import annotations

import asyncio
import zlib

import numpy as np
import pytest
from pgvector.sqlalchemy import Vector
from sqlalchemy import BigInteger, Text, create_engine, select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tests.clients.conftest import (
    DIMS,
    ROWS,
    SHADOW_SCHEMA,
    SHAPES,
    Shape,
    check,
    direct_of,
    is_legacy,
    oracle,
    query_vector,
    threshold_for,
)

SCENARIOS = ("s0", "s100", "fb")


class Base(DeclarativeBase):
    pass


class SplitDoc(Base):
    __tablename__ = "cl_split_docs"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    content: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(Text)
    embedding = mapped_column(Vector(DIMS), nullable=True)


class FbDoc(Base):
    __tablename__ = "cl_fb_docs"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    content: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(Text)
    embedding = mapped_column(Vector(DIMS), nullable=True)


MODELS = {"s0": SplitDoc, "s100": SplitDoc, "fb": FbDoc, "direct": SplitDoc, "shadow": SplitDoc}


def statement(model, shape: Shape, q: np.ndarray, vectors: np.ndarray):
    column = model.embedding
    distance = {"l2": column.l2_distance, "cosine": column.cosine_distance, "ip": column.max_inner_product,
                "l1": column.l1_distance}[shape.metric](q)
    if shape.with_distance:
        stmt = select(model.id, distance.label("distance"), model.content)
    else:
        stmt = select(model.id, model.content)
    if shape.category:
        stmt = stmt.where(model.category == shape.category)
    if shape.threshold:
        stmt = stmt.where(distance < threshold_for(vectors, shape, q))
    stmt = stmt.order_by(distance.desc() if shape.desc else distance)
    return stmt.offset(shape.offset).limit(shape.k) if shape.offset else stmt.limit(shape.k)


def as_rows(result, shape: Shape) -> list[tuple]:
    if shape.with_distance:
        return [(row[0], row[1], row[2]) for row in result]
    return [(row[0], None, row[1]) for row in result]


@pytest.fixture(scope="module")
def engines(scenarios):
    made = {name: create_engine(scenarios.dsn(name, "postgresql+psycopg")) for name in (*SCENARIOS, "direct",
                                                                                      "shadow")}
    yield made
    for engine in made.values():
        engine.dispose()


def run_psycopg(engines, where: str, shape: Shape, q, vectors) -> list[tuple]:
    with Session(engines[where]) as session:
        return as_rows(session.execute(statement(MODELS[where], shape, q, vectors)), shape)


async def run_asyncpg(scenarios, where: str, shape: Shape, q, vectors) -> list[tuple]:
    # no pgvector.asyncpg.register_vector: pgvector.sqlalchemy binds vectors as text, which asyncpg sends as is
    port = scenarios.ports[where]
    settings = {"search_path": f"{SHADOW_SCHEMA},public"} if where == "shadow" else {}
    engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres",
                                 connect_args={"server_settings": settings})

    try:
        async with engine.connect() as conn:
            rows = as_rows(await conn.execute(statement(MODELS[where], shape, q, vectors)), shape)
            again = as_rows(await conn.execute(statement(MODELS[where], shape, q, vectors)), shape)
            assert rows == again  # asyncpg re-uses its prepared statement
            return rows
    finally:
        await engine.dispose()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_sqlalchemy_psycopg(engines, scenarios, scenario, shape) -> None:
    vectors = scenarios.vectors
    q = query_vector(vectors, zlib.crc32(str(shape).encode()) % 1000)
    direct = direct_of(scenario)
    check(scenario, run_psycopg(engines, scenario, shape, q, vectors),
          run_psycopg(engines, direct, shape, q, vectors) if direct else None, oracle(vectors, shape, q))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_sqlalchemy_asyncpg(scenarios, scenario, shape) -> None:
    vectors = scenarios.vectors
    q = query_vector(vectors, zlib.crc32(str(shape).encode()) % 1000)
    direct = direct_of(scenario)
    got = asyncio.run(run_asyncpg(scenarios, scenario, shape, q, vectors))
    want = asyncio.run(run_asyncpg(scenarios, direct, shape, q, vectors)) if direct else None
    check(scenario, got, want, oracle(vectors, shape, q))


def test_sqlalchemy_objects_carry_legacy_vectors(engines, scenarios) -> None:
    """ORM objects of legacy rows carry their vector (never None)."""
    vectors = scenarios.vectors
    q = query_vector(vectors, 11)
    with Session(engines["fb"]) as session:
        objects = session.scalars(select(FbDoc).order_by(FbDoc.embedding.l2_distance(q)).limit(10)).all()
        assert [o.id for o in objects] == [i for i, _ in oracle(vectors, Shape("l2", k=10), q)]
        for o in objects:
            assert o.embedding is not None, o.id
            np.testing.assert_allclose(np.asarray(o.embedding), vectors[o.id - 1], rtol=1e-6)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_sqlalchemy_rows_similar_to_row_x(engines, scenarios, scenario) -> None:
    """pgvector's README form: ORDER BY embedding <-> (SELECT embedding FROM items WHERE id = $1)."""
    vectors = scenarios.vectors
    x = next(i for i in range(1, ROWS + 1) if is_legacy(i))
    model = MODELS[scenario]
    vector_of_x = select(model.embedding).where(model.id == x).scalar_subquery()
    stmt = select(model.id).order_by(model.embedding.l2_distance(vector_of_x)).limit(5)
    with Session(engines[scenario]) as session:
        got = list(session.scalars(stmt))
    assert got == [i for i, _ in oracle(vectors, Shape("l2"), vectors[x - 1])]
