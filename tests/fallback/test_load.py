"""Loading legacy-only rows from a real PostgreSQL: every format, every lane, bad rows skipped with their keys."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import mmap
import uuid
from fractions import Fraction

import asyncpg
import numpy as np
import pytest

from pgcutover.fallback import formats, metrics
from pgcutover.fallback.store import LegacyStore, _populate, _small_pages
from pgcutover.proxy.embedded import EmbeddedPostgres
from tests.fallback.conftest import LegacyTable, create_table, encode, f32_bytes, factory, insert_raw, run, wait_for
from tests.fallback.test_formats import EXACT as EXACT_CASES

KINDS = ["json", "bytea_f32", "bytea_f64", "array", "array_f64"]
LANES = {"default": None, "server": ("server",), "client": ("client",), "both": ("server", "client", "client")}


def assert_holds(store: LegacyStore, table: LegacyTable) -> None:
    assert len(store) == len(table.truth)
    for key, vector in table.truth.items():
        got = store.get(key)
        assert got is not None, key
        assert np.array_equal(got, vector), key


@pytest.mark.parametrize("lanes", list(LANES))
@pytest.mark.parametrize("kind", KINDS)
def test_every_format_loads_exactly(dsn: str, kind: str, lanes: str) -> None:
    async def main() -> None:
        table = await create_table(dsn, kind, dims=24, rows=2000, seed=KINDS.index(kind))
        store = LegacyStore(table.route(), lanes=LANES[lanes], chunk_rows=150, segment_rows=512)
        report = await store.load(factory(dsn))
        assert_holds(store, table)
        assert report.rows == len(table.truth) and report.skipped == {}
        assert report.chunks > 10  # the chunked path really ran
        assert store.qualified_table == f"public.{table.name}"
        assert 1800 not in store and 0 not in store  # migrated rows (every 200th) stay out
        snap = store.snapshot()
        assert snap.rows == len(table.truth) and sum(v.count for v in snap.segments) == len(table.truth)

    run(main())


BAD_VALUES = {
    "json": [("[1,2,3]", formats.DIMS), ("hello", formats.SERVER), ("[1,2,NaN]", formats.NON_FINITE),
             ("[true" + ",1" * 23 + "]", formats.SERVER), ("[1e39" + ",1" * 23 + "]", formats.NON_FINITE),
             ("", formats.SERVER)],
    "bytea_f32": [(b"\x00" * 7, formats.LENGTH), (f32_bytes([1.0] * 23), formats.LENGTH),
                  (f32_bytes([float("nan")] + [1.0] * 23), formats.NON_FINITE)],
    "bytea_f64": [(b"\x00" * 7, formats.LENGTH), (np.full(24, 1e300).astype("<f8").tobytes(), formats.NON_FINITE)],
    "array": [([1.0] * 23, formats.DIMS), ([1.0, None] + [1.0] * 22, formats.NULL),
              ([float("nan")] + [1.0] * 23, formats.NON_FINITE), ([[1.0, 2.0]] * 12, formats.NOT_1D)],
}


@pytest.mark.parametrize("lanes", ["server", "client"])
@pytest.mark.parametrize("kind", list(BAD_VALUES))
def test_bad_rows_are_skipped_with_their_keys(dsn: str, kind: str, lanes: str, caplog: pytest.LogCaptureFixture
                                              ) -> None:
    async def main() -> None:
        table = await create_table(dsn, kind, dims=24, rows=600, seed=7)
        bad_keys = {}
        for i, (value, reason) in enumerate(BAD_VALUES[kind]):
            key = 10_000 + 37 * i  # spread over several chunks
            await insert_raw(dsn, table.name, key, value)
            bad_keys[key] = reason
        store = LegacyStore(table.route(), lanes=LANES[lanes], chunk_rows=50)
        before = metrics.SKIPPED_TOTAL.labels(table=table.name, reason=formats.DIMS).get()
        with caplog.at_level(logging.WARNING, logger="pgcutover.fallback"):
            report = await store.load(factory(dsn))
        assert_holds(store, table)
        got = store.skipped
        if kind == "array":  # the server's own message for a cast it refuses may be the reason
            assert set(got) == set(bad_keys)
        else:
            assert got == bad_keys
        assert sum(report.skipped.values()) == len(bad_keys)
        for key in bad_keys:
            assert f"id={key}" in caplog.text
        if formats.DIMS in bad_keys.values():
            after = metrics.SKIPPED_TOTAL.labels(table=table.name, reason=formats.DIMS).get()
            assert after - before == list(bad_keys.values()).count(formats.DIMS)

    run(main())


def test_json_that_only_pgvector_reads_is_loaded(dsn: str) -> None:
    """`.5` and `5.` are not JSON; pgvector reads them, so such rows are cast by the server, not skipped."""
    async def main() -> None:
        table = await create_table(dsn, "json", dims=4, rows=50, seed=3)
        await insert_raw(dsn, table.name, 500, "[.5, 5., 0x10, 1]")
        store = LegacyStore(table.route(), lanes=("client",))
        await store.load(factory(dsn))
        assert np.array_equal(store.get(500), np.array([0.5, 5.0, 16.0, 1.0], dtype=np.float32))
        assert store.skipped == {}

    run(main())


@pytest.mark.parametrize(("column_type", "reads"), [("json", "json_send"), ("varchar", "textsend"),
                                                   ("jsonb", None)])
def test_json_in_json_varchar_and_jsonb_columns(dsn: str, column_type: str, reads: str | None) -> None:
    """Client lanes read JSON in text-like columns as bytes (textsend / json_send); jsonb, whose binary form has a
    version byte, stays text. Every column type loads the same rows."""
    async def main() -> None:
        table = await create_table(dsn, "json", dims=12, rows=300, seed=21)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"ALTER TABLE {table.name} ALTER COLUMN emb TYPE {column_type}"
                               f" USING emb::{column_type}")
        finally:
            await conn.close()
        store = LegacyStore(table.route(), lanes=("client", "client"), chunk_rows=40)
        report = await store.load(factory(dsn))
        assert_holds(store, table)
        assert report.skipped == {}
        assert store._sql is not None
        assert (f"pg_catalog.{reads}(" in store._sql.value(False)) == (reads is not None)

    run(main())


def test_float16_storage(dsn: str) -> None:
    async def main() -> None:
        table = await create_table(dsn, "bytea_f32", dims=16, rows=500, seed=4)
        await insert_raw(dsn, table.name, 900, f32_bytes([1e5] + [1.0] * 15))
        store = LegacyStore(table.route(), dtype="float16")
        await store.load(factory(dsn))
        assert store.skipped == {900: formats.FP16_RANGE}
        for key, vector in table.truth.items():
            assert np.allclose(store.get(key), vector, rtol=2 ** -10, atol=2 ** -24)
        assert store.snapshot().segments[0].data.dtype == np.float16

    run(main())


def test_dims_from_the_vector_column_and_from_data(dsn: str) -> None:
    async def main() -> None:
        table = await create_table(dsn, "json", dims=12, rows=300)
        store = LegacyStore(table.route(dims=None))
        await store.load(factory(dsn))
        assert store.dims == 12
        assert_holds(store, table)
        conn = await asyncpg.connect(dsn)
        await conn.execute(f"ALTER TABLE {table.name} ALTER emb_vector TYPE vector")  # no typmod any more
        await conn.close()
        store = LegacyStore(table.route(dims=None))
        await store.load(factory(dsn))
        assert store.dims == 12
        assert_holds(store, table)

    run(main())


@pytest.mark.parametrize("key_type", ["text", "uuid"])
def test_non_integer_keys(dsn: str, key_type: str) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(dsn)
        name = f"fb_keys_{key_type}_{uuid.uuid4().hex[:8]}"
        await conn.execute(f'CREATE TABLE {name} ("Key" {key_type} PRIMARY KEY, emb text, emb_vector vector(8))')
        rng = np.random.default_rng(5)
        truth = {}
        for i in range(300):
            key = str(uuid.UUID(int=i * 7919)) if key_type == "uuid" else f"doc-{i:04d}"
            vec = rng.standard_normal(8).astype(np.float32)
            await conn.execute(f'INSERT INTO {name} VALUES ($1, $2)', key if key_type == "text" else uuid.UUID(key),
                               formats.encode_json(vec))
            truth[key if key_type == "text" else uuid.UUID(key)] = vec
        await conn.close()
        table = LegacyTable(name, "json", 8, truth)
        store = LegacyStore(table.route(key="Key"), chunk_rows=40)
        await store.load(factory(dsn))
        assert_holds(store, table)

    run(main())


def test_empty_table(dsn: str) -> None:
    async def main() -> None:
        table = await create_table(dsn, "json", dims=8, rows=0)
        store = LegacyStore(table.route())
        report = await store.load(factory(dsn))
        assert report.rows == 0 and len(store) == 0 and store.loaded

    run(main())


def test_a_lane_whose_backend_dies_fails_the_load_and_the_retry_succeeds(dsn: str) -> None:
    """A lane reads one range ahead of the decode thread; when its backend dies mid-load, load() raises the
    driver's error (the other lane and the decodes queued are cancelled), the store is left empty and not loaded,
    and loading it again (what proxy/legacy.py's retry does) reads every row."""
    async def main() -> None:
        table = await create_table(dsn, "json", dims=32, rows=3000, seed=21)
        store = LegacyStore(table.route(), lanes=("client", "client"), chunk_rows=25)
        opened: list[asyncpg.Connection] = []

        async def connect() -> asyncpg.Connection:
            conn = await asyncpg.connect(dsn)
            opened.append(conn)
            return conn

        admin = await asyncpg.connect(dsn)
        try:
            loading = asyncio.ensure_future(store.load(connect))
            await wait_for(lambda: len(store._index) > 0 or loading.done())
            assert not loading.done()
            async with admin.transaction():  # the lanes' next ranges wait for this lock: the kill lands mid-load
                await admin.execute(f"LOCK TABLE {table.name} IN ACCESS EXCLUSIVE MODE")
                await admin.execute("SELECT pg_terminate_backend($1)", opened[-1].get_server_pid())
                with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)) as caught:
                    await asyncio.wait_for(loading, 20)
                assert "connection" in str(caught.value)  # what /readyz shows: the driver's error, not a group
                assert not isinstance(caught.value, BaseExceptionGroup)
            assert not store.loaded and len(store) == 0  # what a failed load read is dropped
            assert store.snapshot().rows == 0 and store.skipped == {}
            assert all(conn.is_closed() for conn in opened)
        finally:
            await admin.close()
        await store.load(factory(dsn))  # the same store again, as proxy/legacy.py retries
        assert_holds(store, table)

    run(main())


def test_segment_pages_are_private_and_populated_without_writing() -> None:
    """Segment memory is a private anonymous mapping (shared anonymous memory is shmem: slower first touches),
    and `_populate` faults its pages in from the calling thread without changing a byte."""
    data = _small_pages((2048, 512), np.dtype(np.float32))  # 4 MB
    start, pages = data.ctypes.data, data.nbytes // mmap.PAGESIZE
    libc = ctypes.CDLL(None, use_errno=True)

    def resident() -> int:
        vec = (ctypes.c_ubyte * pages)()
        assert libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(data.nbytes), vec) == 0
        return sum(b & 1 for b in vec)

    with open("/proc/self/maps") as f:  # the kernel may merge it with a neighbour: find the area holding it
        areas = [line.split() for line in f]
    perms = next(a[1] for a in areas if int(a[0].split("-")[0], 16) <= start < int(a[0].split("-")[1], 16))
    assert perms == "rw-p"
    assert resident() < pages // 2
    _populate(data)
    assert resident() == pages
    assert not data.any()


@pytest.mark.parametrize("lanes", ["client", "server"])
@pytest.mark.parametrize("kind", ["json", "bytea_f32"])
def test_a_control_role_with_only_select_loads(pg: EmbeddedPostgres, dsn: str, kind: str, lanes: str) -> None:
    """The loader needs SELECT on the table and nothing else: no superuser, no schema of its own (textsend and
    json_send, the server's cast and the catalogs are PUBLIC)."""
    async def main() -> None:
        table = await create_table(dsn, kind, dims=16, rows=400, seed=31)
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute("DO $$ BEGIN CREATE ROLE fb_loader LOGIN NOSUPERUSER; "
                                "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
            await admin.execute(f"GRANT SELECT ON {table.name} TO fb_loader")
        finally:
            await admin.close()
        store = LegacyStore(table.route(), lanes=LANES[lanes], chunk_rows=60)
        report = await store.load(factory(pg.dsn(user="fb_loader")))
        assert_holds(store, table)
        assert report.skipped == {}

    run(main())


def test_refresh_on_a_caller_connection(dsn: str) -> None:
    """refresh() with a connection the store did not open: updates, migrations, new and bad rows."""
    async def main() -> None:
        table = await create_table(dsn, "json", dims=8, rows=100, seed=12)
        store = LegacyStore(table.route())
        await store.load(factory(dsn))
        conn = await asyncpg.connect(dsn)
        new = np.arange(8, dtype=np.float32) / 7
        await conn.execute(f"UPDATE {table.name} SET emb = $1 WHERE id = 3", formats.encode_json(new))
        await conn.execute(f"UPDATE {table.name} SET emb_vector = emb::vector WHERE id = 4")
        await conn.execute(f"INSERT INTO {table.name} (id, emb) VALUES (500, $1), (501, '[1,2]')",
                           formats.encode_json(new))
        await store.refresh(conn, [3, 4, 500, 501, 99999])
        await conn.close()
        assert np.array_equal(store.get(3), new) and np.array_equal(store.get(500), new)
        assert 4 not in store and store.skipped == {501: formats.DIMS}
        assert len(store) == len(table.truth)  # -1 migrated, +1 inserted

    run(main())


# -- bit-identity with the server's own cast, on values double rounding gets wrong ----------------------------
def _adversarial_decimals() -> list[str]:
    """Decimals on, just above and just below float32 rounding midpoints, subnormals, zeros, the range's ends."""
    rng = np.random.default_rng(11)
    out = [text for text, _ in EXACT_CASES]
    scales = np.float32(10) ** rng.integers(-40, 38, 60).astype(np.float32)
    for a in rng.standard_normal(60).astype(np.float32) * scales:
        with np.errstate(over="ignore"):
            b = np.nextafter(a, np.float32(np.inf))
        if not (np.isfinite(a) and np.isfinite(b)):
            continue
        mid = (Fraction(float(a)) + Fraction(float(b))) / 2
        tiny = abs(mid) / 10 ** 30
        out += [_sci(mid), _sci(mid + tiny), _sci(mid - tiny), repr(float(mid))]
    return out


def _sci(value: Fraction) -> str:
    """Exact-enough scientific notation: 60 significant digits (truncated)."""
    sign, value = ("-" if value < 0 else ""), abs(value)
    exp = 0
    while value >= 10:
        value, exp = value / 10, exp + 1
    while value < 1:
        value, exp = value * 10, exp - 1
    digits = str(int(value * 10 ** 59))
    return f"{sign}{digits[0]}.{digits[1:]}e{exp}"


async def _server_rows(dsn: str, table: str, expr: str) -> dict[int, bytes | None]:
    """key -> pgvector's binary value of `expr` for each legacy-only row, None where the server refuses it."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.set_type_codec("vector", schema="public", encoder=bytes, decoder=lambda d: d, format="binary")
        out: dict[int, bytes | None] = {}
        for key in [r[0] for r in await conn.fetch(f"SELECT id FROM {table} WHERE emb_vector IS NULL"
                                                   " AND emb IS NOT NULL")]:
            try:
                out[key] = await conn.fetchval(f"SELECT {expr} FROM {table} WHERE id = $1", key)
            except asyncpg.DataError:
                out[key] = None
        return out
    finally:
        await conn.close()


async def _cast_floats(dsn: str, vectors: list[np.ndarray]) -> dict[int, bytes | None]:
    """i -> pgvector's binary value of `$1::float8[]::vector` for vectors[i], None where the server refuses it."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.set_type_codec("vector", schema="public", encoder=bytes, decoder=lambda d: d, format="binary")
        out: dict[int, bytes | None] = {}
        for i, vector in enumerate(vectors):
            try:
                out[i] = await conn.fetchval("SELECT $1::float8[]::vector", vector.tolist())
            except asyncpg.DataError:
                out[i] = None
        return out
    finally:
        await conn.close()


def assert_bit_identical(store: LegacyStore, server: dict[int, bytes | None], dims: int) -> None:
    refused = {key for key, value in server.items() if value is None}
    assert set(store.skipped) == refused
    assert len(store) == len(server) - len(refused)
    for key, value in server.items():
        if value is not None:
            expected = np.frombuffer(value, dtype=">f4", offset=4).astype(np.float32)
            got = store.get(key)
            assert got is not None and len(expected) == dims
            assert got.view(np.uint32).tolist() == expected.view(np.uint32).tolist(), key


@pytest.mark.parametrize(("lanes", "reader"), [("client", "simdjson"), ("client", "orjson"), ("server", "simdjson"),
                                               ("default", "simdjson")])
def test_json_rows_are_bit_identical_to_the_server_cast(dsn: str, lanes: str, reader: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if reader == "orjson":
        monkeypatch.setattr(formats, "simdjson", None)
    dims = 8
    numbers = _adversarial_decimals()
    rng = np.random.default_rng(3)

    async def main() -> None:
        table = await create_table(dsn, "json", dims=dims, rows=0)
        conn = await asyncpg.connect(dsn)
        rows = [(10 + i, "[" + ", ".join(rng.choice(numbers, dims)) + "]") for i in range(400)]
        rows += [(1000, "[-0, 0, -0.0, 1, 2, 3, 4, -0]"), (1001, "[1e-50, -1e-50, 1e-45, 1, 2, 3, 4, 5]")]
        await conn.executemany(f"INSERT INTO {table.name} (id, emb) VALUES ($1, $2)", rows)
        await conn.close()
        server = await _server_rows(dsn, table.name, "emb::vector")
        assert 0 < sum(v is None for v in server.values()) < len(server) / 2  # some overflow: refused by both
        store = LegacyStore(table.route(), lanes=LANES[lanes], chunk_rows=60)
        await store.load(factory(dsn))
        assert_bit_identical(store, server, dims)
        assert set(store.skipped.values()) <= {formats.NON_FINITE, formats.SERVER}

    run(main())


@pytest.mark.parametrize("kind", ["bytea_f32", "bytea_f64", "array", "array_f64"])
def test_binary_and_array_rows_are_bit_identical_to_the_server_cast(dsn: str, kind: str) -> None:
    """Float64 values on float32 midpoints, -0.0, subnormals, beyond float32: as pgvector's float8[] cast."""
    dims = 8
    rng = np.random.default_rng(4)
    a = (rng.standard_normal(200) * 10.0 ** rng.integers(-44, 38, 200)).astype(np.float32)
    b = np.nextafter(a, np.float32(np.inf))
    mids = (a.astype(np.float64) + b.astype(np.float64)) / 2  # exact float32 midpoints in float64
    special = np.array([-0.0, 0.0, 1e-46, -1e-46, 7.006492321624085e-46, 1e-45, 1.1754942e-38,
                        3.4028235677973366e38, -3.4028235677973366e38, 3.5e38], dtype=np.float64)
    pool = np.concatenate([mids[np.isfinite(mids)], np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf),
                           special])
    if kind in ("bytea_f32", "array"):  # float32 columns: their own values, -0.0 and subnormals included
        pool = pool[np.abs(pool) < 3.4e38].astype(np.float32)

    async def main() -> None:
        table = await create_table(dsn, kind, dims=dims, rows=0)
        conn = await asyncpg.connect(dsn)
        vectors = [rng.choice(pool, dims) for _ in range(300)]
        vectors.append(np.array([-0.0, 0.0, 1e-46, 1, 2, 3, 4, 5]))
        values = [encode(kind if not kind.startswith('array') else 'array', v) for v in vectors]
        await conn.executemany(f"INSERT INTO {table.name} (id, emb) VALUES ($1, $2)",
                               [(10 + i, value) for i, value in enumerate(values)])
        await conn.close()
        if kind.startswith("bytea"):  # no cast from bytea: the float8[] cast pgcutover.try_vector ends with
            server = {10 + i: value for i, value in
                      (await _cast_floats(dsn, [v.astype(np.float64) for v in vectors])).items()}
        else:
            server = await _server_rows(dsn, table.name, "emb::vector")
        store = LegacyStore(table.route(), chunk_rows=70)
        await store.load(factory(dsn))
        assert_bit_identical(store, server, dims)

    run(main())
