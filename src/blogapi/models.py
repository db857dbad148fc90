"""Every ORM model, imported in one place so metadata (and Alembic) sees all tables."""

from blogapi.auth.models import LoginFailures
from blogapi.auth.sessions.models import LoginSession, RefreshToken
from blogapi.db import Base
from blogapi.idempotency import IdempotencyRecord
from blogapi.posts.models import Post, Tag, post_tag
from blogapi.users.models import User

__all__ = [
    "Base",
    "IdempotencyRecord",
    "LoginFailures",
    "LoginSession",
    "Post",
    "RefreshToken",
    "Tag",
    "User",
    "post_tag",
]
