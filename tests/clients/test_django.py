"""Django + pgvector.django through the proxy, in the three scenarios of tests/clients/conftest.py.

Django writes `("t"."embedding" <-> '[...]') AS "distance" ... ORDER BY 4 ASC` (a parenthesised distance, an
ORDER BY ordinal), binds values client-side by default, and selects every column of a model (the vector too).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from tests.clients.conftest import (
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


@pytest.fixture(scope="module")
def django_models(scenarios):
    import django
    from django.conf import settings

    if not settings.configured:
        databases = {}
        for name in ("s0", "s100", "fb", "direct", "shadow"):
            databases[name] = {"ENGINE": "django.db.backends.postgresql", "NAME": "postgres", "USER": "postgres",
                               "HOST": "127.0.0.1", "PORT": str(scenarios.ports[name])}
        databases["shadow"]["OPTIONS"] = {"options": f"-c search_path={SHADOW_SCHEMA},public"}
        # server-side binding: psycopg's extended protocol with the vector as a parameter
        databases["fb_bound"] = {**databases["fb"], "OPTIONS": {"server_side_binding": True}}
        databases["default"] = databases["direct"]
        settings.configure(DATABASES=databases, INSTALLED_APPS=["tests.clients.djangoapp"], USE_TZ=True,
                           DEFAULT_AUTO_FIELD="django.db.models.BigAutoField")
        django.setup()
    from tests.clients.djangoapp.models import FbDoc, SplitDoc

    yield {"s0": SplitDoc, "s100": SplitDoc, "fb": FbDoc, "fb_bound": FbDoc, "direct": SplitDoc,
           "shadow": SplitDoc}
    from django.db import connections

    connections.close_all()


def run(models, db: str, shape: Shape, q: np.ndarray, vectors: np.ndarray) -> list[tuple]:
    from pgvector.django import CosineDistance, L1Distance, L2Distance, MaxInnerProduct

    function = {"l2": L2Distance, "cosine": CosineDistance, "ip": MaxInnerProduct, "l1": L1Distance}[shape.metric]
    rows = models[db].objects.using(db)
    if shape.category:
        rows = rows.filter(category=shape.category)
    if not shape.with_distance:
        rows = rows.order_by(function("embedding", q))
        return [(o.id, None, o.content) for o in rows[shape.offset: shape.offset + shape.k]]
    rows = rows.annotate(distance=function("embedding", q))
    if shape.threshold:
        rows = rows.filter(distance__lt=threshold_for(vectors, shape, q))
    rows = rows.order_by("-distance" if shape.desc else "distance")
    return [(o.id, o.distance, o.content) for o in rows[shape.offset: shape.offset + shape.k]]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("scenario", [*SCENARIOS, "fb_bound"])
def test_django_query_forms(django_models, scenarios, scenario, shape) -> None:
    vectors = scenarios.vectors
    q = query_vector(vectors, zlib.crc32(str(shape).encode()) % 1000)
    got = run(django_models, scenario, shape, q, vectors)
    direct = direct_of(scenario)
    check("fb" if scenario == "fb_bound" else scenario,
          got, run(django_models, direct, shape, q, vectors) if direct else None, oracle(vectors, shape, q))


def test_django_selected_vectors_of_legacy_rows(django_models, scenarios) -> None:
    """Model objects carry their embedding: a legacy row's is its legacy vector, never None."""
    from pgvector.django import L2Distance

    vectors = scenarios.vectors
    q = query_vector(vectors, 5)
    objects = list(django_models["fb"].objects.using("fb").order_by(L2Distance("embedding", q))[:10])
    assert [o.id for o in objects] == [i for i, _ in oracle(vectors, Shape("l2", k=10), q)]
    assert any(is_legacy(o.id) for o in objects)
    for o in objects:
        assert o.embedding is not None, o.id
        np.testing.assert_allclose(np.asarray(o.embedding), vectors[o.id - 1], rtol=1e-6)


def test_django_rows_similar_to_row_x(django_models, scenarios) -> None:
    """`ORDER BY embedding <-> (SELECT embedding FROM t WHERE id = X)`: a legacy row X finds its neighbours."""
    from django.db.models import Subquery
    from pgvector.django import L2Distance

    vectors = scenarios.vectors
    x = next(i for i in range(1, ROWS + 1) if is_legacy(i))
    model = django_models["fb"]
    vector_of_x = Subquery(model.objects.using("fb").filter(id=x).values("embedding")[:1])
    got = [o.id for o in model.objects.using("fb").order_by(L2Distance("embedding", vector_of_x))[:5]]
    assert got == [i for i, _ in oracle(vectors, Shape("l2"), vectors[x - 1])]
    assert got[0] == x
