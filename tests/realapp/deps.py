from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, HTTPException
from sqlmodel import Session

from tests.realapp.db import get_session
from tests.realapp.models import User
from tests.realapp.repositories import UserRepository

SessionDep = Annotated[Session, Depends(get_session)]


def current_user(session: SessionDep, x_user: Annotated[int, Header()] = 1) -> User:
    user = UserRepository(session).get(x_user)
    if user is None:
        raise HTTPException(401, "unknown user")
    return user


CurrentUser = Annotated[User, Depends(current_user)]
