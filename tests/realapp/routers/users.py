from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from tests.realapp.deps import CurrentUser, SessionDep
from tests.realapp.models import User
from tests.realapp.repositories import UserRepository

router = APIRouter(prefix="/users", tags=["users"])


@router.get("/me")
def me(user: CurrentUser) -> dict[str, Any]:
    return {"id": user.id, "name": user.name}


@router.get("/{user_id}")
def profile(user_id: int, viewer: CurrentUser, session: SessionDep) -> dict[str, Any]:
    # The dependency loaded the viewer; this loads another user with the same helper.
    user = UserRepository(session).get(user_id)
    if user is None:
        raise HTTPException(404)
    return {"id": user.id, "name": user.name, "viewer": viewer.id}


@router.post("", status_code=201)
def register(name: str, email: str, session: SessionDep) -> dict[str, Any]:
    users = UserRepository(session)
    if users.exists(email):
        raise HTTPException(409)
    user = users.add(User(name=name, email=email))
    return {"id": user.id, "taken": users.exists(email)}  # checked again after the insert
