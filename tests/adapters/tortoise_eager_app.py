"""A small shop on Tortoise-ORM, shaped like real apps: a router with a prefix, a
repository layer, a current-user dependency read on a replica connection, and response
models over relations. Its endpoints eager-load relations that are read, read only by
the response model, or never read (the unused eager loads the tests expect)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel, ConfigDict, field_validator
from tortoise import connections, fields
from tortoise.models import Model

MODULES = {"models": [__name__]}
REPLICA = "replica"


class Customer(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=100)
    orders: fields.ReverseRelation[Order]

    class Meta:
        app = "models"
        table = "shop_customer"


class Order(Model):
    id = fields.IntField(primary_key=True)
    total = fields.IntField()
    customer: fields.ForeignKeyRelation[Customer] = fields.ForeignKeyField(
        "models.Customer", related_name="orders"
    )
    events: fields.ReverseRelation[Event]

    class Meta:
        app = "models"
        table = "shop_order"


class Event(Model):
    id = fields.IntField(primary_key=True)
    kind = fields.CharField(max_length=20)
    order: fields.ForeignKeyRelation[Order] = fields.ForeignKeyField(
        "models.Order", related_name="events"
    )

    class Meta:
        app = "models"
        table = "shop_event"


async def seed() -> None:
    for c in range(3):
        customer = await Customer.create(name=f"customer {c}")
        for o in range(4):
            order = await Order.create(total=10 * o + c, customer=customer)
            for kind in ("placed", "paid"):
                await Event.create(kind=kind, order=order)


# -- response models -----------------------------------------------------------------


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    kind: str


class OrderWithEvents(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    total: int
    events: list[EventOut]

    @field_validator("events", mode="before")
    @classmethod
    def _rows(cls, value: Any) -> list[Any]:
        return list(value)  # a Tortoise relation container is iterable, not a list


class OrderWithCustomer(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    customer_name: str


# -- the repository ------------------------------------------------------------------


class OrderRepository:
    """What the endpoints ask of the database; each method is one query."""

    async def with_events(self, customer_id: int) -> list[Order]:
        return await Order.filter(customer_id=customer_id).order_by("id").prefetch_related("events")

    async def with_customer(self) -> list[Order]:
        return await Order.all().order_by("id").select_related("customer")

    async def customers_with_orders_and_events(self) -> list[Customer]:
        return await Customer.all().order_by("id").prefetch_related("orders__events")

    async def on_replica(self) -> list[Order]:
        replica = connections.get(REPLICA)
        return await Order.all().using_db(replica).order_by("id").prefetch_related("events")


def repository() -> OrderRepository:
    return OrderRepository()


async def current_customer(x_customer: Annotated[int, Header()] = 0) -> Customer:
    """The signed-in customer, read on the replica."""
    customer = await Customer.filter(id=x_customer).using_db(connections.get(REPLICA)).first()
    if customer is None:
        raise HTTPException(401, "who are you?")
    return customer


Repo = Annotated[OrderRepository, Depends(repository)]
Me = Annotated[Customer, Depends(current_customer)]

router = APIRouter(prefix="/api/v1", tags=["orders"])


@router.get("/orders/mine", response_model=list[OrderWithEvents])
async def my_orders(me: Me, repo: Repo) -> list[Order]:
    # The events are read by the response model only, after the endpoint returned.
    return await repo.with_events(me.id)


@router.get("/orders/totals")
async def my_totals(me: Me, repo: Repo) -> dict[str, int]:
    # The events are prefetched and nothing reads them: an unused eager load.
    orders = await repo.with_events(me.id)
    return {str(order.id): order.total for order in orders}


@router.get("/orders/customers", response_model=list[OrderWithCustomer])
async def orders_with_customers(repo: Repo) -> list[OrderWithCustomer]:
    orders = await repo.with_customer()
    return [OrderWithCustomer(id=o.id, customer_name=o.customer.name) for o in orders]


@router.get("/orders/ids")
async def order_ids(repo: Repo) -> list[int]:
    # select_related("customer") joins the customer, and only the ids are read.
    return [order.id for order in await repo.with_customer()]


@router.get("/customers/order-counts")
async def order_counts(repo: Repo) -> dict[str, int]:
    # The orders are read, the events nested under them are not.
    customers = await repo.customers_with_orders_and_events()
    return {customer.name: len(customer.orders) for customer in customers}


@router.get("/orders/replica")
async def replica_orders(me: Me, repo: Repo) -> dict[str, int]:
    orders = await repo.on_replica()
    return {"orders": len(orders), "me": me.id}


def build() -> FastAPI:
    app = FastAPI()
    app.include_router(router)
    return app
