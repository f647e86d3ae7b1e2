# No `from __future__ import annotations`: SQLModel reads the annotations at class creation.
from sqlmodel import Field, Relationship, SQLModel


class User(SQLModel, table=True):
    __tablename__ = "realapp_user"

    id: int | None = Field(default=None, primary_key=True)
    name: str
    email: str
    articles: list["Article"] = Relationship(back_populates="author")


class Article(SQLModel, table=True):
    __tablename__ = "realapp_article"

    id: int | None = Field(default=None, primary_key=True)
    title: str
    author_id: int = Field(foreign_key="realapp_user.id")
    author: User = Relationship(back_populates="articles")


class Favorite(SQLModel, table=True):
    __tablename__ = "realapp_favorite"

    user_id: int = Field(foreign_key="realapp_user.id", primary_key=True)
    article_id: int = Field(foreign_key="realapp_article.id", primary_key=True)
