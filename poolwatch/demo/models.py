"""The demo's models: the blog of the classic N+1 example."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model


class Author(Model):
    """Someone who writes posts."""

    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=100)

    posts: fields.ReverseRelation[Post]

    class Meta:
        table = "demo_author"


class Post(Model):
    """A post, by one author, with comments."""

    id = fields.IntField(primary_key=True)
    title = fields.CharField(max_length=200)
    body = fields.TextField()
    author: fields.ForeignKeyRelation[Author] = fields.ForeignKeyField(
        "models.Author", related_name="posts"
    )

    comments: fields.ReverseRelation[Comment]

    class Meta:
        table = "demo_post"


class Comment(Model):
    """A reader's comment on a post."""

    id = fields.IntField(primary_key=True)
    text = fields.TextField()
    post: fields.ForeignKeyRelation[Post] = fields.ForeignKeyField(
        "models.Post", related_name="comments"
    )

    class Meta:
        table = "demo_comment"
