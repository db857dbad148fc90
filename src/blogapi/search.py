"""`?q=` without scanning: each backend's text index over the folded titles and names.

The rule is db.fold_for_search's (case-insensitive in any script, accent-sensitive) and a
plain substring match (`%`, `_` and `\\` are characters like any other). The folded column
and `LIKE` decide every answer; an index only finds the candidates, so the answers are the
same on every backend:

- PostgreSQL: a pg_trgm GIN index (`gin_trgm_ops`) on `post.title_folded` and
  `user.name_folded`, used by the `LIKE` itself.
- SQLite: an FTS5 table with the trigram tokenizer over each folded column (external
  content, so it holds the index only), kept in sync by triggers (the migration's).
- MariaDB (no n-gram FULLTEXT parser in 10.11): a side table of (trigram, row id), the
  trigrams of each run of three or more letters and digits of the folded text, written
  by the service in the transaction that writes the row (`index_*` below, also called by
  the seed command), and deleted with the row by the foreign key's cascade.

A term is looked up in the index when it holds three letters or digits in a row
(`indexable`): pg_trgm extracts no trigram from a shorter run, nor from punctuation, and
its GIN scan would then read the whole index. The lookup fetches at most
SEARCH_MAX_MATCHES + 1 matches (ids and positions): if there are no more than
SEARCH_MAX_MATCHES, the page is picked from them. A more common term, and a term the
index cannot look up, walks the list's own page-order index instead, at most
SEARCH_MAX_MATCHES rows per page (posts.service, users.service): the page is then
flagged `search_capped` when the walk ended before the page was full, and its cursor
continues the walk where it stopped.

What a lookup costs: PostgreSQL's GIN scan reads the posting lists of the term's trigrams;
MariaDB reads the rows of the term's rarest trigram (of at most PROBE_TRIGRAMS_MAX) and
checks each of the others by primary key. A term made only of common trigrams (`the
and`, `ter ing`) may cost in proportion to them, though it matches little: the cap counts
matches, not candidates, so only the statement time limit bounds such a lookup (README,
*Searching at scale*; bench/RESULTS.md measures one as `q_trigrams`). Measured at 200,000 posts
(PostgreSQL) and 100,000 (MariaDB), cap 1000, on a busy 2-core machine (best of 8): an
absent or rare term 0.3-3.5 ms; a 1-2 character term 2-5 ms; a term with more matches
than the cap (looked up, then walked) 17-31 ms, which the cap bounds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    ForeignKey,
    FromClause,
    Join,
    MetaData,
    Table,
    bindparam,
    delete,
    insert,
    literal_column,
    select,
    table,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from blogapi.db import LIKE_ESCAPE, NAMING_CONVENTION, AnySelect, binary_string, escape_like
from blogapi.posts.models import Post
from blogapi.users.models import User

TRIGRAM = 3
PROBE_TRIGRAMS_MAX = 6
"""The most trigrams of a term MariaDB intersects: enough to make the candidates few,
few enough for its optimizer to weigh every join order (the `LIKE` checks the rest)."""

# MariaDB's side tables: not part of the models (blogapi.models.Base), since they exist on
# MariaDB only; the migration creates them there and env.py keeps them out of autogenerate.
metadata = MetaData(naming_convention=NAMING_CONVENTION)
post_title_trigram = Table(
    "post_title_trigram",
    metadata,
    Column("trigram", binary_string(TRIGRAM), primary_key=True),
    Column("post_id", ForeignKey(Post.__table__.c.id, ondelete="CASCADE"), primary_key=True),
)
user_name_trigram = Table(
    "user_name_trigram",
    metadata,
    Column("trigram", binary_string(TRIGRAM), primary_key=True),
    Column("user_id", ForeignKey(User.__table__.c.id, ondelete="CASCADE"), primary_key=True),
)

POST_TITLE_FTS = "post_title_fts"
USER_NAME_FTS = "user_name_fts"
TABLES = frozenset({"post_title_trigram", "user_name_trigram", POST_TITLE_FTS, USER_NAME_FTS})
"""Every search table, on the backend that has it (FTS5 adds shadow tables named after it)."""
INDEXES = frozenset({"ix_post_title_folded_trgm", "ix_user_name_folded_trgm"})


def is_search_object(name: str | None) -> bool:
    """A search table or index, or an FTS5 shadow table: not in the models (env.py)."""
    return name is not None and (
        name in TABLES or name in INDEXES or name.startswith((f"{POST_TITLE_FTS}_", f"{USER_NAME_FTS}_"))
    )


class _Contains(ColumnElement[bool]):
    """`text` contains `term`, as a plain substring, by a function no text index serves."""

    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012  (SQLAlchemy's cache key protocol)
        ("text", InternalTraversal.dp_clauseelement),
        ("term", InternalTraversal.dp_clauseelement),
    ]
    type = Boolean()
    _is_implicitly_boolean = True  # else a WHERE on a backend without booleans appends `= 1`

    def __init__(self, text: ColumnElement[str], term: ColumnElement[str]) -> None:
        self.text = text
        self.term = term


@compiles(_Contains)
def _compile_contains(element: _Contains, compiler: SQLCompiler, **kw: Any) -> str:
    return f"instr({compiler.process(element.text, **kw)}, {compiler.process(element.term, **kw)}) > 0"


@compiles(_Contains, "postgresql")
def _compile_contains_postgresql(element: _Contains, compiler: SQLCompiler, **kw: Any) -> str:
    return f"strpos({compiler.process(element.text, **kw)}, {compiler.process(element.term, **kw)}) > 0"


@compiles(_Contains, "mysql")
@compiles(_Contains, "mariadb")
def _compile_contains_mariadb(element: _Contains, compiler: SQLCompiler, **kw: Any) -> str:
    # The column's binary collation wins over the parameter's: byte for byte, as elsewhere.
    return f"LOCATE({compiler.process(element.term, **kw)}, {compiler.process(element.text, **kw)}) > 0"


def walk_filter(folded_column: Any, term: ColumnElement[str]) -> ColumnElement[bool]:
    """The search rule as a filter of a walk in page order, for the folded `term`.

    Not `LIKE`: PostgreSQL would answer a `LIKE` from the trigram index, gathering and
    sorting every match of a common term, where the walk must read at most the cap.
    """
    return _Contains(folded_column, term)


def _runs(folded: str) -> Iterable[str]:
    """The runs of letters and digits of `folded`, three or more long."""
    run: list[str] = []
    for character in [*folded, " "]:
        if character.isalnum():
            run.append(character)
            continue
        if len(run) >= TRIGRAM:
            yield "".join(run)
        run = []


def trigrams(folded: str) -> list[str]:
    """The distinct trigrams MariaDB's side tables hold for `folded`, in order of appearance."""
    found = dict.fromkeys(
        run[start : start + TRIGRAM] for run in _runs(folded) for start in range(len(run) - 2)
    )
    return list(found)


def indexable(folded: str) -> bool:
    """Whether every backend's index can look `folded` up (three letters or digits in a row)."""
    return next(iter(_runs(folded)), None) is not None


def _spread(items: Sequence[str], count: int) -> list[str]:
    """At most `count` of `items`, spread from the first to the last."""
    if len(items) <= count:
        return list(items)
    return [items[round(index * (len(items) - 1) / (count - 1))] for index in range(count)]


def _fts_phrase(folded: str) -> str:
    # An FTS5 string: the trigram tokenizer makes it "contains this substring".
    return '"' + folded.replace('"', '""') + '"'


@dataclass(frozen=True, eq=False)  # compared by identity: columns make expressions of ==
class _Searched:
    """What a text index lookup reads, for posts' titles or users' names."""

    columns: tuple[Any, ...]
    folded: Any
    fts: str
    trigram_table: Table
    trigram_row_id: Column[int]
    row_id: Any


_POSTS = _Searched(
    (Post.id, Post.created_at, Post.author_id),
    Post.title_folded,
    POST_TITLE_FTS,
    post_title_trigram,
    post_title_trigram.c.post_id,
    Post.id,
)
_USERS = _Searched(
    (User.id,), User.name_folded, USER_NAME_FTS, user_name_trigram, user_name_trigram.c.user_id, User.id
)


@cache
def _probe(searched: _Searched, dialect: str, trigram_count: int) -> AnySelect:
    query: AnySelect = select(*searched.columns).where(
        searched.folded.like(bindparam("pattern"), escape=LIKE_ESCAPE)
    )
    if dialect == "sqlite":
        query = query.where(
            searched.row_id.in_(
                select(literal_column("rowid"))
                .select_from(table(searched.fts))
                .where(literal_column(searched.fts).op("MATCH")(bindparam("phrase")))
            )
        )
    elif dialect == "mysql":
        query = _join_trigrams(
            query, searched.trigram_table, searched.trigram_row_id, searched.row_id, trigram_count
        )
    return _limited(query, dialect)


def _post_probe(dialect: str, trigram_count: int) -> AnySelect:
    return _probe(_POSTS, dialect, trigram_count)


def _user_probe(dialect: str, trigram_count: int) -> AnySelect:
    return _probe(_USERS, dialect, trigram_count)


def _limited(query: AnySelect, dialect: str) -> AnySelect:
    """At most `cap` of the rows `query` finds.

    On PostgreSQL the lookup is a materialized CTE, planned for all its rows and read only
    as far as the LIMIT: a prepared statement's generic plan, which knows neither the term
    nor how rare it is, otherwise trades the index for a sequential scan "until the LIMIT"
    (measured at 200,000 posts: 720 ms for an absent term, against 6 ms).
    """
    if dialect != "postgresql":
        return query.limit(bindparam("cap"))
    matches = query.cte("matches").prefix_with("MATERIALIZED")
    return select(*matches.c).limit(bindparam("cap"))


class _StraightJoin(Join):
    """An inner join whose right side MariaDB must read after every table of its left side
    (`STRAIGHT_JOIN` as a join operator); a plain `JOIN` elsewhere. The order within the
    left side stays the optimizer's."""

    inherit_cache = True


@compiles(_StraightJoin, "mysql")
@compiles(_StraightJoin, "mariadb")
def _compile_straight_join(element: _StraightJoin, compiler: SQLCompiler, **kw: Any) -> str:
    kw.pop("asfrom", None)
    from_linter = kw.get("from_linter")
    if from_linter is not None:
        from_linter.edges.add((element.left, element.right))
    left = compiler.process(element.left, asfrom=True, **kw)
    right = compiler.process(element.right, asfrom=True, **kw)
    assert element.onclause is not None  # _join_trigrams builds it with one
    return f"{left} STRAIGHT_JOIN {right} ON {compiler.process(element.onclause, **kw)}"


def _join_trigrams(
    query: AnySelect, table: Table, row_id: Column[int], entity_id: Any, count: int
) -> AnySelect:
    """The rows holding all `count` trigrams, trigrams first: MariaDB drives the join from
    the rarest one (it estimates each equality range of the primary key by diving into it)
    and finds each of the others by primary key; then, and only then (`STRAIGHT_JOIN`), each
    candidate's row by primary key. Left free, on a small table it may start from the
    table, a full scan, whatever the term."""
    aliases = [table.alias(f"g{number}") for number in range(count)]
    first = aliases[0]
    joined: FromClause = first
    for alias in aliases[1:]:
        joined = joined.join(alias, alias.c[row_id.name] == first.c[row_id.name])
    return query.select_from(_StraightJoin(joined, entity_id.table, entity_id == first.c[row_id.name])).where(
        *(alias.c.trigram == bindparam(f"trigram_{number}") for number, alias in enumerate(aliases))
    )


def _probe_values(folded: str, cap: int, dialect: str) -> tuple[int, dict[str, Any]]:
    values: dict[str, Any] = {"pattern": f"%{escape_like(folded)}%", "cap": cap}
    chosen: list[str] = []
    if dialect == "sqlite":
        values["phrase"] = _fts_phrase(folded)
    elif dialect == "mysql":
        chosen = _spread(trigrams(folded), PROBE_TRIGRAMS_MAX)
        values |= {f"trigram_{number}": trigram for number, trigram in enumerate(chosen)}
    return len(chosen), values


async def post_matches(connection: AsyncConnection, folded: str, cap: int) -> list[tuple[datetime, int, int]]:
    """(created_at, id, author_id) of at most `cap` posts whose title contains `folded`
    (which must be `indexable`), found by the text index, in no particular order."""
    dialect = connection.dialect.name
    count, values = _probe_values(folded, cap, dialect)
    rows = await connection.execute(_post_probe(dialect, count), values)
    return [(row.created_at, row.id, row.author_id) for row in rows]


async def user_matches(connection: AsyncConnection, folded: str, cap: int) -> list[int]:
    """The ids of at most `cap` users whose name contains `folded` (`indexable`), unordered."""
    dialect = connection.dialect.name
    count, values = _probe_values(folded, cap, dialect)
    return list(await connection.scalars(_user_probe(dialect, count), values))


_UNINDEX_POST = delete(post_title_trigram).where(post_title_trigram.c.post_id == bindparam("row_id"))
_UNINDEX_USER = delete(user_name_trigram).where(user_name_trigram.c.user_id == bindparam("row_id"))


async def _index(
    connection: AsyncConnection, table: Table, rows: Iterable[tuple[int, str]], *, replace: bool
) -> None:
    if connection.dialect.name != "mysql":
        return  # PostgreSQL's index and SQLite's triggers keep themselves
    rows = list(rows)
    if replace:
        unindex = _UNINDEX_POST if table is post_title_trigram else _UNINDEX_USER
        await connection.execute(unindex, [{"row_id": row_id} for row_id, _ in rows])
    id_column = table.c.post_id.name if table is post_title_trigram else table.c.user_id.name
    entries = [
        {"trigram": trigram, id_column: row_id} for row_id, folded in rows for trigram in trigrams(folded)
    ]
    if entries:
        await connection.execute(insert(table), entries)


async def index_titles(
    connection: AsyncConnection, rows: Iterable[tuple[int, str]], *, replace: bool = False
) -> None:
    """Index new posts' folded titles, given as (id, title_folded); `replace` drops what a
    post's old title left first. MariaDB only: elsewhere the database keeps its index."""
    await _index(connection, post_title_trigram, rows, replace=replace)


async def index_names(
    connection: AsyncConnection, rows: Iterable[tuple[int, str]], *, replace: bool = False
) -> None:
    """index_titles, for users' folded names."""
    await _index(connection, user_name_trigram, rows, replace=replace)
