"""The OpenAPI document: what a generated client and a reader of the docs rely on."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_SECRET

from blogapi.config import Settings
from blogapi.errors import PROBLEM_KINDS, ProblemType
from blogapi.main import OPTIONAL_CREDENTIALS_NOTE, create_app

PROBLEM = "application/problem+json"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "problems.md"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    # Building the document connects to nothing: one app, whatever the backend.
    settings = Settings(database_url="sqlite+aiosqlite:///:memory:", secret_key=TEST_SECRET, _env_file=None)
    return create_app(settings).openapi()


def _operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        operation["operationId"]: operation
        for path_item in document["paths"].values()
        for operation in path_item.values()
    }


def _schema(document: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    name = reference["$ref"].removeprefix("#/components/schemas/")
    schema: dict[str, Any] = document["components"]["schemas"][name]
    return schema


def test_operation_ids_are_the_endpoint_names(document: dict[str, Any]) -> None:
    assert set(_operations(document)) == {
        "create_user",
        "read_me",
        "list_users",
        "read_user",
        "update_user",
        "delete_user",
        "list_user_posts",
        "create_post",
        "list_posts",
        "read_post",
        "update_post",
        "delete_post",
        "list_tags",
        "issue_token",
        "refresh_token",
        "log_out",
        "list_my_sessions",
        "end_my_session",
        "request_password_reset",
        "confirm_password_reset",
        "verify_email",
        "resend_verification",
        "live",
        "ready",
        "version",
    }


def test_reads_that_take_an_optional_token_declare_anonymous_access(document: dict[str, Any]) -> None:
    """No security requirement, so generated clients take an anonymous client; the description tells."""
    operations = _operations(document)
    for name in ("list_users", "read_user"):
        assert "security" not in operations[name], name
        assert operations[name]["description"].endswith(OPTIONAL_CREDENTIALS_NOTE), name
    for name in ("read_me", "update_user", "delete_user", "create_post", "update_post", "delete_post"):
        assert operations[name]["security"] == [{"OAuth2PasswordBearer": []}], name
    assert operations["resend_verification"]["security"] == [{"OAuth2PasswordBearer": []}]
    for name in (
        "list_posts",
        "read_post",
        "list_tags",
        "list_user_posts",
        "create_user",
        "issue_token",
        "request_password_reset",
        "confirm_password_reset",
        "verify_email",
    ):
        assert "security" not in operations[name], name


def test_every_request_body_has_an_example(document: dict[str, Any]) -> None:
    bodies = 0
    for name, operation in _operations(document).items():
        for media_type in operation.get("requestBody", {}).get("content", {}).values():
            bodies += 1
            examples = _schema(document, media_type["schema"]).get("examples")
            assert examples, name
    # sign-up, login, refresh, create and update a user and a post, reset (ask, confirm), verify
    assert bodies == 9


def test_every_error_status_has_examples_of_its_kinds(document: dict[str, Any]) -> None:
    for name, operation in _operations(document).items():
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            media_type = response["content"][PROBLEM]
            assert media_type["schema"] == {"$ref": "#/components/schemas/Problem"}
            assert media_type["examples"], (name, status)
            for example in media_type["examples"].values():
                problem = example["value"]
                assert problem["status"] == int(status), (name, status)
                assert PROBLEM_KINDS[ProblemType(problem["type"])].status == int(status)


def test_specific_kinds_are_documented_where_they_happen(document: dict[str, Any]) -> None:
    operations = _operations(document)

    def kinds(name: str, status: str) -> set[str]:
        examples = operations[name]["responses"][status]["content"][PROBLEM]["examples"]
        return {example["value"]["type"] for example in examples.values()}

    assert ProblemType.EMAIL_TAKEN in kinds("create_user", "409")
    assert ProblemType.IDEMPOTENCY_KEY_REUSED in kinds("create_post", "422")
    assert ProblemType.INVALID_CURSOR in kinds("list_posts", "422")
    assert ProblemType.PRECONDITION_FAILED in kinds("update_post", "412")
    assert kinds("issue_token", "401") == {ProblemType.INVALID_CREDENTIALS, ProblemType.ACCOUNT_DISABLED}
    assert kinds("read_me", "401") == {ProblemType.UNAUTHORIZED}


def test_responses_declare_the_headers_they_send(document: dict[str, Any]) -> None:
    for name, operation in _operations(document).items():
        for status, response in operation["responses"].items():
            headers = set(response.get("headers", {}))
            if status == "401":
                assert "WWW-Authenticate" in headers, name
            if status in ("429", "503"):
                assert "Retry-After" in headers, (name, status)
    operations = _operations(document)
    for name in ("create_user", "create_post"):
        assert set(operations[name]["responses"]["201"]["headers"]) == {
            "Location",
            "ETag",
            "Idempotent-Replayed",
        }
    for name in ("read_me", "read_user", "update_user", "read_post", "update_post"):
        assert "ETag" in operations[name]["responses"]["200"]["headers"], name


def test_the_login_form_describes_username_as_the_email(document: dict[str, Any]) -> None:
    body = _operations(document)["issue_token"]["requestBody"]["content"]["application/x-www-form-urlencoded"]
    username = _schema(document, body["schema"])["properties"]["username"]
    assert "email" in username["description"]


def test_every_problem_type_is_documented_in_the_schema_and_in_docs(document: dict[str, Any]) -> None:
    described = document["components"]["schemas"]["Problem"]["properties"]["type"]["description"]
    documented = DOCS.read_text()
    for problem_type in ProblemType:
        assert f"`{problem_type.value}`" in described
        assert f"`{problem_type.value}`" in documented, f"docs/problems.md lacks {problem_type}"
    assert "type" in document["components"]["schemas"]["Problem"]["required"]


def test_every_pattern_the_service_checks_is_in_the_document(document: dict[str, Any]) -> None:
    """A validator that runs before a field's constraints can hide their pattern from the
    JSON schema: clients and the fuzzer then see any string as valid."""
    schemas = document["components"]["schemas"]
    for model, field in (("UserCreate", "email"), ("UserCreate", "name"), ("PostCreate", "title")):
        assert "pattern" in schemas[model]["properties"][field], (model, field)
    assert "pattern" in schemas["PostCreate"]["properties"]["tags"]["items"]


CONDITIONAL_WRITES = ("update_user", "delete_user", "update_post", "delete_post")


@pytest.mark.parametrize("operation_id", CONDITIONAL_WRITES)
def test_the_if_match_format_is_in_the_document_and_takes_the_tags_the_service_issues(
    document: dict[str, Any], operation_id: str
) -> None:
    """The fuzzer generates If-Match from this pattern: without it, almost every tag it sent
    was arbitrary text, refused, and the code behind the precondition went untested."""
    (parameter,) = [p for p in _operations(document)[operation_id]["parameters"] if p["name"] == "If-Match"]
    # A string, never null: a header has no null (the fuzzer sent the text "null").
    assert parameter["schema"]["type"] == "string"
    assert not parameter["required"]
    pattern = re.compile(parameter["schema"]["pattern"])
    for accepted in ('"1"', '"12"', "*", 'W/"3"', '"7", "8"', ' "1" ,"2" '):
        assert pattern.fullmatch(accepted), accepted
    for refused in ("1", "", '"1" "2"', "W/1", '"a b"', '"1",'):
        assert not pattern.fullmatch(refused), refused


def test_the_login_form_says_what_a_login_requires(document: dict[str, Any]) -> None:
    """Fields sent empty count as missing in a form, a form has no null, and no account's
    email or password holds NUL: the document says so, so generated logins are real ones."""
    body = _operations(document)["issue_token"]["requestBody"]["content"]["application/x-www-form-urlencoded"]
    form = _schema(document, body["schema"])["properties"]
    for field in ("username", "password"):
        assert form[field]["minLength"] == 1
        assert not re.search(form[field]["pattern"], "a\x00b")
    assert form["grant_type"] == {
        "type": "string",
        "const": "password",
        "title": "Grant Type",
        "description": "`password` if sent.",
    }


def test_passwords_in_the_document_refuse_nul(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for model, field in (
        ("UserCreate", "password"),
        ("UserUpdate", "password"),
        ("UserUpdate", "current_password"),
    ):
        pattern = schemas[model]["properties"][field]["pattern"]
        assert re.fullmatch(pattern, "correct horse"), (model, field)
        assert not re.fullmatch(pattern, "correct\x00horse"), (model, field)
