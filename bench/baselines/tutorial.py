"""What a reader of the seed tutorial ("SQLAlchemy & FastAPI: In-Depth Guide") ends up with.

The tutorial's code as written there: `create_async_engine(DATABASE_URL, echo=True)`,
`sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)`, `declarative_base()`
with `Column` models, a `get_db` dependency, endpoints that add, commit, refresh and return
ORM objects. It is mapped onto blogapi's tables (user, post, tag, post_tag) and serves the
endpoints the benchmark calls with blogapi's JSON shapes. What had to change to run:

- `relationship(..., lazy="selectin")` on the two relationships a post's JSON reads: the
  tutorial's default lazy loading raises MissingGreenlet under asyncio, and "selectin"
  is the fix its readers find first. `User.posts` stays as the tutorial wrote it.
- `.dict()` is `.model_dump()` (Pydantic v2), and response models say
  `from_attributes=True` (v1's `orm_mode`).
- No `Base.metadata.create_all`: the tables come from blogapi's migrations. Two of their
  columns are NOT NULL without a server default, so the models name them: a post's
  `title_folded` (blogapi's search copy of the title, folded as raw.py folds it) and a
  link's `created_at`. The tags' `post_count` is left alone (the runner recounts it).
- `/health/ready`, page envelopes with a (plain, unsigned) cursor (and on `/posts`
  `search_capped: false`, as blogapi's unsearched pages) and POST's `author_id` in the
  body (no auth) exist for the benchmark.

echo=True logs every statement to stdout: run it with stdout sent to a file or /dev/null.
"""

from __future__ import annotations

import base64
import os
import unicodedata
from datetime import UTC, datetime

from fastapi import Depends, FastAPI, HTTPException, Query
from pydantic import BaseModel, ConfigDict, field_validator
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    select,
    text,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import declarative_base, relationship, sessionmaker

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql+asyncpg://root@127.0.0.1:5432/blogapi_bench")

engine = create_async_engine(DATABASE_URL, echo=True)
AsyncSessionLocal = sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)

Base = declarative_base()


def utcnow() -> datetime:
    return datetime.now(UTC)


def folded_title(context) -> str:
    title = context.get_current_parameters()["title"]
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", title).casefold())


post_tag = Table(
    "post_tag",
    Base.metadata,
    Column("post_id", Integer, ForeignKey("post.id"), primary_key=True),
    Column("tag_id", Integer, ForeignKey("tag.id"), primary_key=True),
    Column("created_at", DateTime(timezone=True), default=utcnow, nullable=False),
)


class User(Base):
    __tablename__ = "user"
    id = Column(Integer, primary_key=True, index=True)
    name = Column(String, index=True)
    email = Column(String, unique=True, index=True)
    password_hash = Column(String)
    is_admin = Column(Boolean, default=False)
    created_at = Column(DateTime(timezone=True), default=utcnow)
    updated_at = Column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Tag(Base):
    __tablename__ = "tag"
    id = Column(Integer, primary_key=True)
    name = Column(String, unique=True, index=True)


class Post(Base):
    __tablename__ = "post"
    id = Column(Integer, primary_key=True)
    title = Column(String)
    title_folded = Column(String, default=folded_title)
    body = Column(Text)
    author_id = Column(Integer, ForeignKey("user.id"))
    created_at = Column(DateTime(timezone=True), default=utcnow)
    updated_at = Column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    author = relationship("User", back_populates="posts", lazy="selectin")
    tags = relationship("Tag", secondary=post_tag, lazy="selectin")


User.posts = relationship("Post", back_populates="author")


async def get_db():  # type: ignore[no-untyped-def]  # as in the tutorial
    async with AsyncSessionLocal() as session:
        yield session


class AuthorOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str


class PostOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    title: str
    body: str
    author: AuthorOut
    tags: list[str]
    created_at: datetime
    updated_at: datetime

    @field_validator("tags", mode="before")
    @classmethod
    def tag_names(cls, tags: list[Tag]) -> list[str]:
        return sorted(tag.name for tag in tags)


class PostPage(BaseModel):
    items: list[PostOut]
    next_cursor: str | None


class SearchPostPage(PostPage):
    search_capped: bool = False  # GET /posts says it in blogapi (its search); never capped here


class PostCreate(BaseModel):
    title: str
    body: str = ""
    tags: list[str] = []
    author_id: int


class UserOut(BaseModel):
    id: int
    name: str
    email: str | None
    is_admin: bool
    is_active: bool | None = None  # shown only to the user themself and to admins
    created_at: datetime
    updated_at: datetime


app = FastAPI()


def page_of(posts: list[Post], limit: int) -> dict[str, object]:
    next_cursor = None
    if len(posts) > limit:
        last = posts[limit - 1]
        next_cursor = base64.urlsafe_b64encode(f"{last.created_at.isoformat()}|{last.id}".encode()).decode()
    return {"items": posts[:limit], "next_cursor": next_cursor}


async def newest_posts(
    db: AsyncSession, limit: int, cursor: str | None, author_id: int | None = None
) -> dict:
    query = select(Post).order_by(Post.created_at.desc(), Post.id.desc()).limit(limit + 1)
    if author_id is not None:
        query = query.where(Post.author_id == author_id)
    if cursor:
        created_at, post_id = base64.urlsafe_b64decode(cursor).decode().split("|")
        query = query.where(
            tuple_(Post.created_at, Post.id) < (datetime.fromisoformat(created_at), int(post_id))
        )
    result = await db.execute(query)
    return page_of(list(result.scalars().all()), limit)


@app.get("/health/ready")
async def ready(db: AsyncSession = Depends(get_db)):  # noqa: B008
    await db.execute(text("SELECT 1"))
    return {"status": "ok"}


@app.post("/api/v1/posts", response_model=PostOut, status_code=201)
async def create_post(post: PostCreate, db: AsyncSession = Depends(get_db)):  # noqa: B008
    data = post.model_dump()
    tag_names = sorted({name.lower() for name in data.pop("tags")})
    new_post = Post(**data)
    for name in tag_names:
        result = await db.execute(select(Tag).where(Tag.name == name))
        tag = result.scalar_one_or_none()
        if tag is None:
            tag = Tag(name=name)
            db.add(tag)
        new_post.tags.append(tag)
    db.add(new_post)
    await db.commit()
    await db.refresh(new_post)
    return new_post


@app.get("/api/v1/posts", response_model=SearchPostPage)
async def list_posts(
    limit: int = Query(20, ge=1, le=100),
    cursor: str | None = None,
    db: AsyncSession = Depends(get_db),  # noqa: B008
):
    return await newest_posts(db, limit, cursor)


@app.get("/api/v1/posts/{post_id}", response_model=PostOut)
async def read_post(post_id: int, db: AsyncSession = Depends(get_db)):  # noqa: B008
    post = await db.get(Post, post_id)
    if post is None:
        raise HTTPException(status_code=404, detail="Post not found")
    return post


@app.get("/api/v1/users/{user_id}", response_model=UserOut)
async def read_user(user_id: int, db: AsyncSession = Depends(get_db)):  # noqa: B008
    user = await db.get(User, user_id)
    if user is None:
        raise HTTPException(status_code=404, detail="User not found")
    return {
        "id": user.id,
        "name": user.name,
        "email": None,  # shown only to the user themself
        "is_admin": user.is_admin,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
    }


@app.get("/api/v1/users/{user_id}/posts", response_model=PostPage)
async def list_user_posts(
    user_id: int,
    limit: int = Query(20, ge=1, le=100),
    cursor: str | None = None,
    db: AsyncSession = Depends(get_db),  # noqa: B008
):
    page = await newest_posts(db, limit, cursor, author_id=user_id)
    if not page["items"] and await db.get(User, user_id) is None:
        raise HTTPException(status_code=404, detail="User not found")
    return page
