"""The shop's tables, for Tortoise and for SQLAlchemy (the same schema twice)."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from tortoise import fields
from tortoise.models import Model

ITEMS = 50


class Item(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=100)
    stock = fields.IntField(default=1_000_000)

    class Meta:
        app = "models"
        table = "shop_item"


class Order(Model):
    id = fields.IntField(primary_key=True)
    item: fields.ForeignKeyRelation[Item] = fields.ForeignKeyField(
        "models.Item", related_name="orders"
    )
    quantity = fields.IntField()

    class Meta:
        app = "models"
        table = "shop_order"


class Base(DeclarativeBase):
    pass


class ItemRow(Base):
    __tablename__ = "shop_item"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    stock: Mapped[int] = mapped_column(default=1_000_000)


class OrderRow(Base):
    __tablename__ = "shop_order"

    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("shop_item.id"))
    quantity: Mapped[int]
