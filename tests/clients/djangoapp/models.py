from django.db import models
from pgvector.django import VectorField

from tests.clients.conftest import DIMS


class Doc(models.Model):
    """The columns both test tables share (unmanaged: the tests create the tables)."""

    id = models.BigIntegerField(primary_key=True)
    content = models.TextField()
    category = models.TextField()
    embedding = VectorField(dimensions=DIMS, null=True)

    class Meta:
        abstract = True


class SplitDoc(Doc):
    class Meta:
        app_label = "djangoapp"
        db_table = "cl_split_docs"
        managed = False


class FbDoc(Doc):
    class Meta:
        app_label = "djangoapp"
        db_table = "cl_fb_docs"
        managed = False
