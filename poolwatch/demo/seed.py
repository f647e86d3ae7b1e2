"""Seed data for the demo: a handful of authors, each with posts and comments."""

from __future__ import annotations

from poolwatch.demo.models import Author, Comment, Post


async def seed(authors: int = 10, posts_per_author: int = 5, comments_per_post: int = 3) -> None:
    """Fill an empty database; leave a seeded one alone (restarts keep their data)."""
    if await Author.exists():
        return
    await Author.bulk_create([Author(name=f"Author {i}") for i in range(1, authors + 1)])
    everyone = await Author.all().order_by("id")
    await Post.bulk_create(
        [
            Post(title=f"Post {a.id}.{p}", body="Lorem ipsum " * 20, author=a)
            for a in everyone
            for p in range(1, posts_per_author + 1)
        ]
    )
    posts = await Post.all().order_by("id")
    await Comment.bulk_create(
        [
            Comment(text=f"Comment {c} on {p.title}", post=p)
            for p in posts
            for c in range(comments_per_post)
        ]
    )
