"""The demo FastAPI app, instrumented by poolwatch in four lines."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from tortoise.contrib.fastapi import RegisterTortoise
from tortoise.transactions import in_transaction

from poolwatch import Autosize, PoolWatch
from poolwatch.demo.models import Author, Comment, Post
from poolwatch.demo.seed import seed

DEFAULT_DATABASE_URL = "sqlite://demo.sqlite3"


def create_app(
    database_url: str | None = None,
    watch: PoolWatch | None = None,
    *,
    autosize: Autosize | bool | Mapping[str, Any] | None = None,
) -> FastAPI:
    """Build the demo app on ``database_url`` (default: ``DATABASE_URL`` or SQLite).

    ``autosize`` is handed to ``instrument_tortoise`` (PostgreSQL and MySQL pools).
    """
    url = database_url or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    watch = watch or PoolWatch()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watch.instrument_tortoise(autosize=autosize)
        try:
            async with RegisterTortoise(
                app,
                db_url=url,
                modules={"models": ["poolwatch.demo.models"]},
                generate_schemas=True,
            ):
                await seed()
                yield
        finally:
            watch.uninstrument()

    app = FastAPI(title="poolwatch demo: a blog", lifespan=lifespan)
    app.state.watch = watch
    watch.instrument_app(app)
    _add_routes(app)
    return app


def _add_routes(app: FastAPI) -> None:
    @app.get("/authors")
    async def list_authors() -> list[dict[str, Any]]:
        """All authors (one query)."""
        return [{"id": a.id, "name": a.name} for a in await Author.all().order_by("id")]

    @app.get("/authors/{author_id}")
    async def get_author(author_id: int) -> dict[str, Any]:
        """One author with their posts (two queries)."""
        author = await Author.get_or_none(id=author_id).prefetch_related("posts")
        if author is None:
            raise HTTPException(404, "no such author")
        return {
            "id": author.id,
            "name": author.name,
            "posts": [{"id": p.id, "title": p.title} for p in author.posts],
        }

    @app.get("/posts/nplusone")
    async def posts_nplusone() -> list[dict[str, Any]]:
        """Deliberately N+1: one query for the posts, then one per post for its author."""
        posts = await Post.all().order_by("id").limit(20)
        result = []
        for post in posts:
            author = await post.author  # one SELECT per post: the N+1
            result.append({"id": post.id, "title": post.title, "author": author.name})
        return result

    @app.get("/posts")
    async def posts_prefetched() -> list[dict[str, Any]]:
        """The N+1 endpoint's twin: ``prefetch_related`` loads every author in one query."""
        posts = await Post.all().order_by("id").limit(20).prefetch_related("author")
        return [{"id": p.id, "title": p.title, "author": p.author.name} for p in posts]

    @app.get("/posts/{post_id}/comments")
    async def post_comments(post_id: int) -> list[dict[str, Any]]:
        """A post's comments."""
        comments = await Comment.filter(post_id=post_id).order_by("id")
        return [{"id": c.id, "text": c.text} for c in comments]

    @app.post("/posts/{post_id}/comments", status_code=201)
    async def add_comment(post_id: int, text: str = "Nice post") -> dict[str, Any]:
        """Add a comment inside a transaction."""
        async with in_transaction():
            post = await Post.get_or_none(id=post_id)
            if post is None:
                raise HTTPException(404, "no such post")
            comment = await Comment.create(text=text, post=post)
        return {"id": comment.id, "text": comment.text}
