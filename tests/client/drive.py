"""Drive blogapi through the Python client openapi-python-client generates from /openapi.json.

tests/test_generated_client.py generates the package `blogapi_client`, type-checks this
script against it (mypy --strict), then runs it with the generator's environment:
`python drive.py BASE_URL`. Any result that is not what the document promises fails an
assertion, and the script exits non-zero.
"""

from __future__ import annotations

import sys

# The generated package exists only in the test's temporary folder; the project's own
# mypy run sees this script without it.
# mypy: disable-error-code="import-not-found"
from blogapi_client import AuthenticatedClient, Client
from blogapi_client.api.auth import issue_token
from blogapi_client.api.posts import create_post, list_posts
from blogapi_client.api.users import create_user, list_users, read_user
from blogapi_client.models import (
    LoginForm,
    PostCreate,
    PostRead,
    Problem,
    SearchPagePostRead,
    SearchPageUserRead,
    Token,
    UserCreate,
    UserRead,
)

PROBLEMS = "https://blogapi.dev/problems/"
EMAIL = "ada@example.com"
PASSWORD = "correct horse battery"


def main(base_url: str) -> None:
    anonymous = Client(base_url=base_url, raise_on_unexpected_status=True)

    user = create_user.sync(client=anonymous, body=UserCreate(name="Ada", email=EMAIL, password=PASSWORD))
    assert isinstance(user, UserRead), user
    assert user.email == EMAIL

    token = issue_token.sync(client=anonymous, body=LoginForm(username=EMAIL, password=PASSWORD))
    assert isinstance(token, Token), token
    author = AuthenticatedClient(base_url=base_url, token=token.access_token, raise_on_unexpected_status=True)

    for number in range(3):
        post = create_post.sync(client=author, body=PostCreate(title=f"Post {number}", tags=["client"]))
        assert isinstance(post, PostRead), post
        assert post.author.id == user.id

    # An anonymous read, two pages of it: the second from the first's cursor.
    first = list_posts.sync(client=anonymous, author_id=user.id, limit=2)
    assert isinstance(first, SearchPagePostRead), first
    assert first.next_cursor is not None
    second = list_posts.sync(client=anonymous, author_id=user.id, limit=2, cursor=first.next_cursor)
    assert isinstance(second, SearchPagePostRead), second
    assert second.next_cursor is None
    assert [post.title for post in first.items + second.items] == ["Post 2", "Post 1", "Post 0"]

    # The token is optional on user reads: anonymous callers get no email, the owner sees theirs.
    seen = read_user.sync(user.id, client=anonymous)
    assert isinstance(seen, UserRead), seen
    assert seen.email is None
    own = read_user.sync(user.id, client=author)
    assert isinstance(own, UserRead), own
    assert own.email == EMAIL
    users = list_users.sync(client=anonymous, q="Ada")
    assert isinstance(users, SearchPageUserRead), users
    assert [(listed.id, listed.email) for listed in users.items] == [(user.id, None)]

    # A search: the page says whether its walk was capped (here it was looked up whole).
    found = list_posts.sync(client=anonymous, q="POST 1")
    assert isinstance(found, SearchPagePostRead), found
    assert [post.title for post in found.items] == ["Post 1"]
    assert found.search_capped is False

    taken = create_user.sync(client=anonymous, body=UserCreate(name="Twin", email=EMAIL, password=PASSWORD))
    assert isinstance(taken, Problem), taken
    assert (taken.status, taken.type_) == (409, PROBLEMS + "email-taken")

    invalid = create_user.sync(
        client=anonymous, body=UserCreate(name="Nobody", email="nobody.example.com", password=PASSWORD)
    )
    assert isinstance(invalid, Problem), invalid
    assert (invalid.status, invalid.type_) == (422, PROBLEMS + "validation-error")
    assert isinstance(invalid.errors, list), invalid.errors
    assert [(error.loc, error.msg.startswith("not a valid email address")) for error in invalid.errors] == [
        (["body", "email"], True)
    ]
    print("driven: sign-up, login, create, list with cursor, anonymous and own user reads, 409, 422")


if __name__ == "__main__":
    main(sys.argv[1])
