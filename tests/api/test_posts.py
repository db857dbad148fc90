"""Posts: create, read, update, delete, filters, timestamps and commit-time failures."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import Account, Accounts, assert_problem
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

from blogapi.config import Settings
from blogapi.db import Database
from blogapi.posts.models import Post

API = "/api/v1"
PROBLEM = "application/problem+json"
OUT_OF_RANGE_IDS = (0, -1, 2**31, 2**63, 10**30)


async def create_post(client: httpx.AsyncClient, account: Account, **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"title": "A title", **fields}
    response = await client.post(f"{API}/posts", json=payload, headers=account.headers)
    assert response.status_code == 201, response.text
    post: dict[str, Any] = response.json()
    return post


async def get_post(client: httpx.AsyncClient, post_id: int) -> dict[str, Any]:
    response = await client.get(f"{API}/posts/{post_id}")
    assert response.status_code == 200, response.text
    post: dict[str, Any] = response.json()
    return post


async def list_titles(client: httpx.AsyncClient, **params: Any) -> list[str]:
    response = await client.get(f"{API}/posts", params={"limit": 100, **params})
    assert response.status_code == 200, response.text
    return [post["title"] for post in response.json()["items"]]


def parse_timestamp(value: str) -> datetime:
    assert value.endswith(("Z", "+00:00")), value
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.utcoffset() == timedelta(0)
    return parsed


# Creating


async def test_creating_a_post_returns_201_the_post_and_its_location(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create("Ann")
    response = await client.post(
        f"{API}/posts",
        json={"title": "Hello", "body": "First post.", "tags": ["intro"]},
        headers=ann.headers,
    )
    assert response.status_code == 201, response.text
    post = response.json()
    assert response.headers["location"] == f"/api/v1/posts/{post['id']}"
    assert isinstance(post["id"], int)
    assert post["title"] == "Hello"
    assert post["body"] == "First post."
    assert post["tags"] == ["intro"]
    assert post["author"] == {"id": ann.id, "name": "Ann"}
    assert set(post) == {"id", "title", "body", "author", "tags", "created_at", "updated_at"}


async def test_a_created_post_can_be_read_back_at_its_location(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    response = await client.post(
        f"{API}/posts", json={"title": "Hello", "body": "Text", "tags": ["b", "a"]}, headers=ann.headers
    )
    assert response.status_code == 201, response.text
    read = await client.get(response.headers["location"])
    assert read.status_code == 200
    assert read.json() == response.json()


async def test_a_post_defaults_to_an_empty_body_and_no_tags(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann, title="Only a title")
    stored = await get_post(client, post["id"])
    assert stored["body"] == ""
    assert stored["tags"] == []


async def test_the_title_is_trimmed(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann, title="   spaced out  ")
    assert (await get_post(client, post["id"]))["title"] == "spaced out"


async def test_creating_a_post_anonymously_is_401_with_a_bearer_challenge(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(f"{API}/posts", json={"title": "Hello"})
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert await list_titles(client) == []


async def test_an_author_id_in_the_body_is_rejected_as_an_unknown_field(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    bob = await accounts.create()
    response = await client.post(
        f"{API}/posts", json={"title": "Impersonation", "author_id": bob.id}, headers=ann.headers
    )
    problem = assert_problem(response, 422)
    assert any(error["loc"][-1] == "author_id" for error in problem["errors"])
    assert await list_titles(client) == []


async def test_a_title_of_200_characters_is_accepted(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    title = "t" * 200
    post = await create_post(client, ann, title=title)
    assert (await get_post(client, post["id"]))["title"] == title


async def test_a_title_of_200_four_byte_characters_is_accepted(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    title = "💥" * 200
    post = await create_post(client, ann, title=title)
    assert (await get_post(client, post["id"]))["title"] == title


async def test_a_title_of_201_characters_is_rejected(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    response = await client.post(f"{API}/posts", json={"title": "t" * 201}, headers=ann.headers)
    assert_problem(response, 422)
    assert await list_titles(client) == []


@pytest.mark.parametrize("title", ["", "   "], ids=["empty", "blank"])
async def test_an_empty_title_after_trimming_is_rejected(
    client: httpx.AsyncClient, accounts: Accounts, title: str
) -> None:
    ann = await accounts.create()
    response = await client.post(f"{API}/posts", json={"title": title}, headers=ann.headers)
    assert_problem(response, 422)


async def test_a_missing_title_is_rejected(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    response = await client.post(f"{API}/posts", json={"body": "no title"}, headers=ann.headers)
    assert_problem(response, 422)


async def test_a_title_with_a_nul_character_is_rejected(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    response = await client.post(f"{API}/posts", json={"title": "a\u0000b"}, headers=ann.headers)
    assert_problem(response, 422)
    assert await list_titles(client) == []


async def test_a_body_with_a_nul_character_is_rejected(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    response = await client.post(
        f"{API}/posts", json={"title": "ok", "body": "a\u0000b"}, headers=ann.headers
    )
    assert_problem(response, 422)


async def test_a_body_keeps_its_line_breaks_and_tabs(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    body = "line one\nline two\r\n\tindented"
    post = await create_post(client, ann, body=body)
    assert (await get_post(client, post["id"]))["body"] == body


@pytest.mark.parametrize(
    "raw",
    [b'{"title": "\\ud800"}', b'{"title": "ok", "body": "\\udfff"}'],
    ids=["title", "body"],
)
async def test_a_lone_surrogate_is_rejected_with_422_not_500(
    client: httpx.AsyncClient, accounts: Accounts, raw: bytes
) -> None:
    ann = await accounts.create()
    response = await client.post(
        f"{API}/posts", content=raw, headers={**ann.headers, "Content-Type": "application/json"}
    )
    assert_problem(response, 422)
    assert await list_titles(client) == []


async def test_malformed_json_is_rejected_with_a_json_problem(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    response = await client.post(
        f"{API}/posts", content=b"{bad", headers={**ann.headers, "Content-Type": "application/json"}
    )
    assert_problem(response, 422)


async def test_tags_are_lower_cased_deduplicated_and_sorted(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann, tags=["Python", "python", "SQL"])
    assert post["tags"] == ["python", "sql"]
    assert (await get_post(client, post["id"]))["tags"] == ["python", "sql"]


async def test_posts_share_an_existing_tag(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    first = await create_post(client, ann, tags=["shared"])
    second = await create_post(client, ann, tags=["SHARED", "new"])
    assert (await get_post(client, first["id"]))["tags"] == ["shared"]
    assert (await get_post(client, second["id"]))["tags"] == ["new", "shared"]


@pytest.mark.parametrize(
    "tag",
    ["bad tag!", "", "a" * 33, "comma,tag", "slash/tag", "---", "🙂"],
    ids=["space-bang", "empty", "33-chars", "comma", "slash", "punctuation-only", "emoji"],
)
async def test_an_invalid_tag_is_rejected(client: httpx.AsyncClient, accounts: Accounts, tag: str) -> None:
    ann = await accounts.create()
    response = await client.post(f"{API}/posts", json={"title": "t", "tags": [tag]}, headers=ann.headers)
    assert_problem(response, 422)
    assert await list_titles(client) == []


async def test_a_tag_of_32_characters_with_digits_and_hyphens_is_accepted(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    tag = "a-1" * 10 + "zz"
    post = await create_post(client, ann, tags=[tag])
    assert (await get_post(client, post["id"]))["tags"] == [tag]


async def test_20_tags_are_accepted(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    tags = [f"tag-{i:02d}" for i in range(20)]
    post = await create_post(client, ann, tags=tags)
    assert (await get_post(client, post["id"]))["tags"] == tags


async def test_21_tags_are_rejected(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    tags = [f"tag-{i:02d}" for i in range(21)]
    response = await client.post(f"{API}/posts", json={"title": "t", "tags": tags}, headers=ann.headers)
    assert_problem(response, 422)
    assert await list_titles(client) == []


class TestLongBodies:
    """Field limits on bodies that only fit the production request-size limit (1 MiB).

    20,000 four-byte characters are 80,000 bytes of JSON, over the 64 KiB the shared
    test settings allow, so these tests run with the production default instead.
    """

    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"max_body_bytes": 1_048_576})

    async def test_a_body_of_20000_four_byte_characters_is_stored_and_read_back(
        self, client: httpx.AsyncClient, accounts: Accounts
    ) -> None:
        ann = await accounts.create()
        body = "💥" * 20_000
        post = await create_post(client, ann, body=body)
        assert (await get_post(client, post["id"]))["body"] == body

    async def test_a_body_of_20001_characters_is_rejected(
        self, client: httpx.AsyncClient, accounts: Accounts
    ) -> None:
        ann = await accounts.create()
        response = await client.post(
            f"{API}/posts", json={"title": "t", "body": "💥" * 20_001}, headers=ann.headers
        )
        assert_problem(response, 422)
        assert await list_titles(client) == []


async def test_a_unicode_title_round_trips_byte_identical(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    title = "déjà vu 💥🚀 李"
    post = await create_post(client, ann, title=title)
    stored = (await get_post(client, post["id"]))["title"]
    assert stored.encode("utf-8") == title.encode("utf-8")


# Timestamps


async def test_timestamps_are_utc_and_current(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann)
    stored = await get_post(client, post["id"])
    now = datetime.now(UTC)
    for name in ("created_at", "updated_at"):
        moment = parse_timestamp(stored[name])
        assert abs(now - moment) < timedelta(seconds=5), (name, stored[name])


async def test_the_timestamps_returned_on_create_match_the_stored_ones(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann)
    stored = await get_post(client, post["id"])
    assert parse_timestamp(post["created_at"]) == parse_timestamp(stored["created_at"])
    assert parse_timestamp(post["updated_at"]) == parse_timestamp(stored["updated_at"])


async def test_patching_moves_updated_at_forward_and_keeps_created_at(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann)
    before = await get_post(client, post["id"])
    response = await client.patch(f"{API}/posts/{post['id']}", json={"title": "New"}, headers=ann.headers)
    assert response.status_code == 200, response.text
    after = await get_post(client, post["id"])
    assert parse_timestamp(after["created_at"]) == parse_timestamp(before["created_at"])
    assert parse_timestamp(after["updated_at"]) >= parse_timestamp(before["updated_at"])
    assert parse_timestamp(after["updated_at"]) > parse_timestamp(before["created_at"])
    assert abs(datetime.now(UTC) - parse_timestamp(after["updated_at"])) < timedelta(seconds=5)


# Reading


async def test_reading_a_missing_post_is_404(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann)
    response = await client.get(f"{API}/posts/{post['id'] + 1000}")
    assert_problem(response, 404)


@pytest.mark.parametrize("post_id", OUT_OF_RANGE_IDS)
@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_an_out_of_range_post_id_is_404_or_422_never_a_server_error(
    client: httpx.AsyncClient, accounts: Accounts, method: str, post_id: int
) -> None:
    ann = await accounts.create()
    json = {"title": "x"} if method == "PATCH" else None
    response = await client.request(method, f"{API}/posts/{post_id}", json=json, headers=ann.headers)
    assert response.status_code in (404, 422), response.text
    assert_problem(response, response.status_code)


@pytest.mark.parametrize("post_id", ["abc", "1.5", "1e3"])
async def test_a_non_integer_post_id_is_422(client: httpx.AsyncClient, post_id: str) -> None:
    assert_problem(await client.get(f"{API}/posts/{post_id}"), 422)


# Updating


async def test_the_author_can_update_their_post(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann, title="Old", body="old body", tags=["old"])
    response = await client.patch(
        f"{API}/posts/{post['id']}",
        json={"title": "New", "body": "new body", "tags": ["New", "more"]},
        headers=ann.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["title"] == "New"
    stored = await get_post(client, post["id"])
    assert (stored["title"], stored["body"], stored["tags"]) == ("New", "new body", ["more", "new"])
    assert stored["author"] == {"id": ann.id, "name": ann.name}


async def test_another_user_cannot_update_a_post_and_it_is_unchanged(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    bob = await accounts.create()
    post = await create_post(client, ann, title="Ann's", tags=["mine"])
    before = await get_post(client, post["id"])
    response = await client.patch(
        f"{API}/posts/{post['id']}", json={"title": "Bob's now", "tags": []}, headers=bob.headers
    )
    assert_problem(response, 403)
    assert await get_post(client, post["id"]) == before


async def test_updating_a_post_anonymously_is_401_and_it_is_unchanged(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann, title="Ann's")
    before = await get_post(client, post["id"])
    response = await client.patch(f"{API}/posts/{post['id']}", json={"title": "Nobody's"})
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert await get_post(client, post["id"]) == before


async def test_an_admin_can_update_any_post_and_the_author_stays(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    admin = await accounts.create("Admin", admin=True)
    post = await create_post(client, ann, title="Ann's")
    response = await client.patch(
        f"{API}/posts/{post['id']}", json={"title": "Moderated"}, headers=admin.headers
    )
    assert response.status_code == 200, response.text
    stored = await get_post(client, post["id"])
    assert stored["title"] == "Moderated"
    assert stored["author"]["id"] == ann.id


async def test_updating_a_missing_post_is_404(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann)
    response = await client.patch(
        f"{API}/posts/{post['id'] + 1000}", json={"title": "x"}, headers=ann.headers
    )
    assert_problem(response, 404)


@pytest.mark.parametrize(
    ("change", "field", "value"),
    [
        ({"title": "New title"}, "title", "New title"),
        ({"body": "New body"}, "body", "New body"),
        ({"tags": ["fresh"]}, "tags", ["fresh"]),
    ],
    ids=["title", "body", "tags"],
)
async def test_an_update_changes_only_the_fields_sent(
    client: httpx.AsyncClient, accounts: Accounts, change: dict[str, Any], field: str, value: Any
) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann, title="Old title", body="Old body", tags=["old"])
    before = await get_post(client, post["id"])
    response = await client.patch(f"{API}/posts/{post['id']}", json=change, headers=ann.headers)
    assert response.status_code == 200, response.text
    after = await get_post(client, post["id"])
    assert after[field] == value
    for name in ("id", "title", "body", "tags", "author", "created_at"):
        if name != field:
            assert after[name] == before[name], name


async def test_an_empty_tag_list_clears_the_tags(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann, tags=["a", "b"])
    response = await client.patch(f"{API}/posts/{post['id']}", json={"tags": []}, headers=ann.headers)
    assert response.status_code == 200, response.text
    assert (await get_post(client, post["id"]))["tags"] == []


async def test_an_update_normalizes_tags_like_create(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann, tags=["a"])
    response = await client.patch(
        f"{API}/posts/{post['id']}", json={"tags": ["Zed", "zed", "A"]}, headers=ann.headers
    )
    assert response.status_code == 200, response.text
    assert (await get_post(client, post["id"]))["tags"] == ["a", "zed"]


@pytest.mark.parametrize("field", ["title", "body", "tags"])
async def test_a_null_field_in_an_update_is_rejected(
    client: httpx.AsyncClient, accounts: Accounts, field: str
) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann, title="Kept", body="kept", tags=["kept"])
    before = await get_post(client, post["id"])
    response = await client.patch(f"{API}/posts/{post['id']}", json={field: None}, headers=ann.headers)
    assert_problem(response, 422)
    assert await get_post(client, post["id"]) == before


async def test_an_unknown_field_in_an_update_is_rejected(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    bob = await accounts.create()
    post = await create_post(client, ann)
    before = await get_post(client, post["id"])
    response = await client.patch(
        f"{API}/posts/{post['id']}", json={"author_id": bob.id}, headers=ann.headers
    )
    assert_problem(response, 422)
    assert await get_post(client, post["id"]) == before


async def test_an_update_applies_the_create_validation(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann, title="Kept")
    response = await client.patch(f"{API}/posts/{post['id']}", json={"title": "t" * 201}, headers=ann.headers)
    assert_problem(response, 422)
    assert (await get_post(client, post["id"]))["title"] == "Kept"


# Deleting


async def test_the_author_can_delete_their_post(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann)
    response = await client.delete(f"{API}/posts/{post['id']}", headers=ann.headers)
    assert response.status_code == 204
    assert response.content == b""
    assert_problem(await client.get(f"{API}/posts/{post['id']}"), 404)


async def test_deleting_a_post_twice_is_404_the_second_time(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann)
    assert (await client.delete(f"{API}/posts/{post['id']}", headers=ann.headers)).status_code == 204
    assert_problem(await client.delete(f"{API}/posts/{post['id']}", headers=ann.headers), 404)


async def test_another_user_cannot_delete_a_post(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    bob = await accounts.create()
    post = await create_post(client, ann)
    assert_problem(await client.delete(f"{API}/posts/{post['id']}", headers=bob.headers), 403)
    await get_post(client, post["id"])


async def test_deleting_a_post_anonymously_is_401(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann)
    response = await client.delete(f"{API}/posts/{post['id']}")
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    await get_post(client, post["id"])


async def test_an_admin_can_delete_any_post(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    admin = await accounts.create(admin=True)
    post = await create_post(client, ann)
    assert (await client.delete(f"{API}/posts/{post['id']}", headers=admin.headers)).status_code == 204
    assert_problem(await client.get(f"{API}/posts/{post['id']}"), 404)


async def test_deleting_one_post_leaves_the_others(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    doomed = await create_post(client, ann, title="doomed", tags=["t"])
    await create_post(client, ann, title="kept", tags=["t"])
    assert (await client.delete(f"{API}/posts/{doomed['id']}", headers=ann.headers)).status_code == 204
    assert await list_titles(client) == ["kept"]


# Filters


async def test_posts_can_be_filtered_by_author(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    bob = await accounts.create()
    await create_post(client, ann, title="ann 1")
    await create_post(client, bob, title="bob 1")
    await create_post(client, ann, title="ann 2")
    assert await list_titles(client, author_id=ann.id) == ["ann 2", "ann 1"]
    assert await list_titles(client, author_id=bob.id) == ["bob 1"]


async def test_filtering_by_an_author_without_posts_is_empty(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    await create_post(client, ann)
    assert await list_titles(client, author_id=ann.id + 1000) == []


async def test_posts_can_be_filtered_by_tag_case_insensitively(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    await create_post(client, ann, title="py", tags=["python"])
    await create_post(client, ann, title="both", tags=["python", "sql"])
    await create_post(client, ann, title="sql", tags=["sql"])
    assert await list_titles(client, tag="PyThOn") == ["both", "py"]
    assert await list_titles(client, tag="sql") == ["sql", "both"]
    assert await list_titles(client, tag="rust") == []


async def test_a_filtered_post_still_shows_all_its_tags(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    await create_post(client, ann, tags=["python", "sql", "web"])
    response = await client.get(f"{API}/posts", params={"tag": "sql"})
    assert response.status_code == 200
    assert [post["tags"] for post in response.json()["items"]] == [["python", "sql", "web"]]


async def test_an_invalid_tag_filter_is_rejected(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"{API}/posts", params={"tag": "bad tag!"}), 422)


async def test_posts_can_be_searched_by_title_case_insensitively(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    await create_post(client, ann, title="Learning SQLAlchemy")
    await create_post(client, ann, title="Why I like sql")
    await create_post(client, ann, title="Gardening", body="sql in the body does not count")
    assert await list_titles(client, q="SqL") == ["Why I like sql", "Learning SQLAlchemy"]


# One rule on every backend: case-insensitive by Unicode case folding, accent-sensitive,
# blind to composition. SQLite's lower() is ASCII-only; MariaDB's collation ignores accents.
SEARCH_TITLES = ("école", "ecole", "Straße", "ΣΟΦΙΑ", "cafe\u0301 noir")


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("ÉCOLE", ["école"]),
        ("école", ["école"]),
        ("ecole", ["ecole"]),
        ("STRASSE", ["Straße"]),
        ("straße", ["Straße"]),
        ("σοφια", ["ΣΟΦΙΑ"]),
        ("CAFÉ", ["cafe\u0301 noir"]),  # NFC query, NFD title
        ("cafe", []),
    ],
)
async def test_title_search_folds_case_in_any_script_but_not_accents_on_every_backend(
    client: httpx.AsyncClient, accounts: Accounts, q: str, expected: list[str]
) -> None:
    ann = await accounts.create()
    for title in SEARCH_TITLES:
        await create_post(client, ann, title=title)
    assert await list_titles(client, q=q) == expected


async def test_a_changed_title_is_searched_by_its_new_text(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    post = await create_post(client, ann, title="Old news")
    response = await client.patch(f"{API}/posts/{post['id']}", json={"title": "ÉTÉ"}, headers=ann.headers)
    assert response.status_code == 200, response.text
    assert await list_titles(client, q="été") == ["ÉTÉ"]
    assert await list_titles(client, q="old") == []


@pytest.mark.parametrize(
    ("q", "expected"),
    [("%", ["100% real"]), ("_", ["snake_case"]), ("0%", ["100% real"]), ("e_c", ["snake_case"])],
)
async def test_like_wildcards_in_the_search_are_literal(
    client: httpx.AsyncClient, accounts: Accounts, q: str, expected: list[str]
) -> None:
    ann = await accounts.create()
    for title in ("100% real", "snake_case", "plain title", "100 percent", "snakeXcase"):
        await create_post(client, ann, title=title)
    assert await list_titles(client, q=q) == expected


async def test_a_search_for_a_backslash_or_slash_is_literal(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    for title in ("C:\\path", "a/b", "plain"):
        await create_post(client, ann, title=title)
    assert await list_titles(client, q="\\") == ["C:\\path"]
    assert await list_titles(client, q="/") == ["a/b"]


async def test_filters_combine(client: httpx.AsyncClient, accounts: Accounts) -> None:
    ann = await accounts.create()
    bob = await accounts.create()
    await create_post(client, ann, title="ann python news", tags=["python"])
    await create_post(client, ann, title="ann python other", tags=["python"])
    await create_post(client, ann, title="ann sql news", tags=["sql"])
    await create_post(client, bob, title="bob python news", tags=["python"])
    titles = await list_titles(client, author_id=ann.id, tag="Python", q="NEWS")
    assert titles == ["ann python news"]


# Transactions


@contextmanager
def failing_commits(database: Database) -> Iterator[None]:
    """Every COMMIT the app sends fails, as when the database drops during commit."""

    def fail(_connection: Any) -> None:
        raise OperationalError("COMMIT", {}, Exception("injected"))

    event.listen(database.engine.sync_engine, "commit", fail)
    try:
        yield
    finally:
        event.remove(database.engine.sync_engine, "commit", fail)


async def test_a_post_whose_commit_fails_is_503_not_a_success(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    ann = await accounts.create()  # before commits start failing
    with failing_commits(database):
        response = await client.post(f"{API}/posts", json={"title": "Never stored"}, headers=ann.headers)
    assert not response.is_success
    assert_problem(response, 503)
    assert response.headers["retry-after"].isdigit()
    assert "location" not in response.headers


async def test_after_a_failed_commit_the_post_does_not_exist(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    ann = await accounts.create()  # before commits start failing
    with failing_commits(database):
        await client.post(f"{API}/posts", json={"title": "Never stored"}, headers=ann.headers)
    assert await list_titles(client) == []
    async with database.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Post)) == 0


async def test_a_post_is_readable_immediately_after_it_is_created(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    ann = await accounts.create()
    for i in range(20):
        post = await create_post(client, ann, title=f"post {i}")
        response = await client.get(f"{API}/posts/{post['id']}")
        assert response.status_code == 200, (i, response.text)
        assert response.json()["title"] == f"post {i}"
