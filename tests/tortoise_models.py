"""Models for the Tortoise adapter tests, and what those tests share."""

from __future__ import annotations

import pytest
from tortoise import fields
from tortoise.models import Model

# Tortoise 0.21.0's psycopg client opens its pool in the constructor, which psycopg_pool
# 3.2+ deprecates (0.21.7 creates it closed, then awaits `open()`): not a poolwatch warning.
IGNORE_OLD_PSYCOPG_CLIENT = pytest.mark.filterwarnings(
    "ignore:opening the async pool .* in the constructor:RuntimeWarning"
)


class Author(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=100)

    class Meta:
        app = "models"
        table = "t_author"


class Book(Model):
    id = fields.IntField(primary_key=True)
    title = fields.CharField(max_length=100)
    author: fields.ForeignKeyRelation[Author] = fields.ForeignKeyField(
        "models.Author", related_name="books"
    )

    class Meta:
        app = "models"
        table = "t_book"
