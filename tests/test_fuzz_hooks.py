"""The custom checks of `make fuzz` (fuzz/hooks.py), judged on schemathesis' own objects.

Cases are built from the document the service serves, responses as schemathesis records
them, so a check sees here what it sees in a run. Nothing is sent: the responses are the
ones a run gets back.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests
import schemathesis
from conftest import TEST_SECRET
from schemathesis.checks import CheckContext
from schemathesis.config import ChecksConfig
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.transport import Response
from schemathesis.engine.recorder import ScenarioRecorder
from schemathesis.generation.meta import (
    CaseMetadata,
    ComponentInfo,
    CoverageScenario,
    GenerationInfo,
    PhaseInfo,
    StatefulPhaseData,
    TestPhase,
)
from schemathesis.generation.modes import GenerationMode
from schemathesis.openapi.checks import EnsureResourceAvailability
from schemathesis.specs.openapi.checks import ensure_resource_availability

from blogapi.config import Settings
from blogapi.main import create_app

HOOKS = Path(__file__).resolve().parent.parent / "fuzz" / "hooks.py"
BASE_URL = "http://127.0.0.1:8000"

POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE

pytestmark = pytest.mark.backends("sqlite")  # no database: the document and the checks only


@pytest.fixture(scope="module")
def hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("blogapi_fuzz_hooks", HOOKS)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def schema() -> Any:
    settings = Settings(database_url="sqlite+aiosqlite:///:memory:", secret_key=TEST_SECRET, _env_file=None)
    return schemathesis.openapi.from_dict(create_app(settings).openapi())


def _response(case: Any, status: int, headers: dict[str, str], body: bytes = b"{}") -> Response:
    request = requests.Request(
        case.method, BASE_URL + case.formatted_path, headers=dict(case.headers or {})
    ).prepare()
    return Response(
        status_code=status,
        headers={name: [value] for name, value in headers.items()},
        content=body,
        request=request,
        elapsed=0.01,
        verify=True,
    )


def _create_then_read(schema: Any, *, replayed: bool) -> tuple[CheckContext, Response, Any]:
    """A POST /posts (201, first answer or a replay) and a GET of the post it names: 404."""
    create = schema["/api/v1/posts"]["POST"].Case(
        headers={"Idempotency-Key": "0"}, body={"title": "0", "body": "", "tags": []}
    )
    created_headers = {"Location": "/api/v1/posts/197", "ETag": '"1"', "Content-Type": "application/json"}
    if replayed:
        created_headers["Idempotent-Replayed"] = "true"
    created = _response(create, 201, created_headers, b'{"id": 197}')
    read = schema["/api/v1/posts/{post_id}"]["GET"].Case(
        path_parameters={"post_id": 197}, headers={"If-None-Match": '"0"'}
    )
    # As in a stateful step, every parameter is given (the link's), none generated: the
    # built-in check judges only such reads.
    assert {name for _, values in read._override.items() for name in values} == {"post_id", "If-None-Match"}
    not_found = _response(
        read,
        404,
        {"Content-Type": "application/problem+json"},
        b'{"type": "https://blogapi.dev/problems/not-found", "status": 404, "detail": "post 197 not found"}',
    )
    recorder = ScenarioRecorder(label="stateful")
    recorder.record_case(case=create)
    recorder.record_response(case_id=create.id, response=created)
    recorder.record_case(case=read, parent_id=create.id)
    recorder.record_response(case_id=read.id, response=not_found)
    ctx = CheckContext(
        override=None,
        auth=None,
        headers=None,
        config=ChecksConfig(),
        transport_kwargs=None,
        recorder=recorder,
        response_checks=None,
    )
    return ctx, not_found, read


def test_a_404_for_the_post_a_replayed_creation_names_is_not_a_failure(
    hooks: ModuleType, schema: Any
) -> None:
    ctx, response, case = _create_then_read(schema, replayed=True)
    # The built-in check alone reports it (the finding of issue 15, seed 4242)...
    with pytest.raises(EnsureResourceAvailability):
        ensure_resource_availability(ctx, response, case)
    # ...the hook that runs it instead does not.
    assert hooks.ensure_resource_availability_unless_replayed(ctx, response, case) is None


def test_a_404_for_a_post_just_created_still_fails_as_created_resource_not_found(
    hooks: ModuleType, schema: Any
) -> None:
    ctx, response, case = _create_then_read(schema, replayed=False)
    with pytest.raises(EnsureResourceAvailability, match="Created with"):
        hooks.ensure_resource_availability_unless_replayed(ctx, response, case)


def test_the_replay_header_counts_only_on_a_201_to_a_post_with_an_idempotency_key(
    hooks: ModuleType, schema: Any
) -> None:
    operation = "POST /api/v1/posts"
    create = schema["/api/v1/posts"]["POST"].Case(headers={"Idempotency-Key": "0"}, body={"title": "0"})
    replayed = {"Idempotent-Replayed": "true"}
    assert hooks._is_replay(operation, _response(create, 201, replayed))
    assert not hooks._is_replay(operation, _response(create, 201, {}))
    assert not hooks._is_replay(operation, _response(create, 201, {"Idempotent-Replayed": "false"}))
    assert not hooks._is_replay(operation, _response(create, 200, replayed))
    assert not hooks._is_replay("PATCH /api/v1/posts/{post_id}", _response(create, 201, replayed))
    without_key = schema["/api/v1/posts"]["POST"].Case(body={"title": "0"})
    assert not hooks._is_replay(operation, _response(without_key, 201, replayed))


def test_the_built_in_check_is_off_only_because_the_hook_runs_it() -> None:
    import tomllib

    config = tomllib.loads((HOOKS.parent / "schemathesis.toml").read_text())
    assert config["checks"]["ensure_resource_availability"] == {"enabled": False}
    assert "def ensure_resource_availability_unless_replayed" in HOOKS.read_text()


def _meta(mode: GenerationMode, **components: GenerationMode) -> CaseMetadata:
    return CaseMetadata(
        generation=GenerationInfo(time=0.0, mode=mode),
        components={ParameterLocation(location): ComponentInfo(mode=m) for location, m in components.items()},
        phase=PhaseInfo.coverage(
            CoverageScenario.NEAR_BOUNDARY_NUMBER,
            "Near-boundary number",
            parameter="post_id",
            parameter_location=ParameterLocation.PATH,
        ),
    )


def test_a_case_labelled_positive_whose_header_is_negative_is_not_sent(
    hooks: ModuleType, schema: Any
) -> None:
    # What the coverage phase made for seed 20261125: `If-Match: 0` (it builds headers from
    # letters and digits only) in a case labelled positive for its near-boundary post_id.
    case = schema["/api/v1/posts/{post_id}"]["DELETE"].Case(
        path_parameters={"post_id": 2147483646},
        headers={"If-Match": "0"},
        _meta=_meta(POSITIVE, path=POSITIVE, header=NEGATIVE),
    )
    assert hooks.filter_case(None, case) is False


def test_consistent_cases_positive_or_negative_are_all_sent(hooks: ModuleType, schema: Any) -> None:
    operation = schema["/api/v1/posts/{post_id}"]["DELETE"]
    positive = operation.Case(
        path_parameters={"post_id": 1},
        headers={"If-Match": '"1"'},
        _meta=_meta(POSITIVE, path=POSITIVE, header=POSITIVE),
    )
    negative = operation.Case(
        path_parameters={"post_id": 1},
        headers={"If-Match": "0"},
        _meta=_meta(NEGATIVE, path=POSITIVE, header=NEGATIVE),
    )
    assert hooks.filter_case(None, positive) is True
    assert hooks.filter_case(None, negative) is True
    # A case without metadata (an explicit example) is sent as it is.
    assert hooks.filter_case(None, operation.Case(path_parameters={"post_id": 1})) is True


def test_every_list_that_takes_a_cursor_has_its_rejections_judged_by_type(hooks: ModuleType) -> None:
    """A new keyset list (GET /users/me/sessions was missed once) gets the cursor exemption too."""
    settings = Settings(database_url="sqlite+aiosqlite:///:memory:", secret_key=TEST_SECRET, _env_file=None)
    document = create_app(settings).openapi()
    with_cursor = {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if any(parameter["name"] == "cursor" for parameter in operation.get("parameters", []))
    }
    assert with_cursor == hooks.CURSOR_OPERATIONS
    # ... and the built-in check lets their 422s through to it (fuzz/schemathesis.toml).
    import tomllib

    config = tomllib.loads((HOOKS.parent / "schemathesis.toml").read_text())
    judged = {
        name
        for rule in config["operations"]
        if "422" in rule["checks"]["positive_data_acceptance"]["expected-statuses"]
        for name in rule["include-name"]
    }
    assert with_cursor <= judged


def _problem(case: Any, status: int, problem_type: str) -> Response:
    body = f'{{"type": "{problem_type}", "status": {status}, "detail": "x"}}'.encode()
    return _response(case, status, {"Content-Type": "application/problem+json"}, body)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/auth/password-reset/confirm", {"token": "0", "new_password": "00000000"}),
        ("/api/v1/auth/verify", {"token": "0"}),
    ],
)
def test_a_mailed_token_the_service_never_issued_is_judged_by_its_problem_type(
    hooks: ModuleType, schema: Any, path: str, body: dict[str, str]
) -> None:
    case = schema[path]["POST"].Case(body=body, _meta=_meta(POSITIVE, body=POSITIVE))
    operation = f"POST {path}"
    expected = hooks.TOKEN_OPERATIONS[operation]
    # The token's own 400 is what a schema-valid token the service never issued gets...
    hooks.positive_data_rejected_only_for_server_state(None, _problem(case, 400, expected), case)
    # ...any other 400 to schema-valid data still fails (a 422 too: the built-in check's, below).
    with pytest.raises(AssertionError, match="Schema-valid request"):
        hooks.positive_data_rejected_only_for_server_state(
            None, _problem(case, 400, "https://blogapi.dev/problems/cors-refused"), case
        )
    import tomllib

    config = tomllib.loads((HOOKS.parent / "schemathesis.toml").read_text())
    statuses = {
        name: rule["checks"]["positive_data_acceptance"]["expected-statuses"]
        for rule in config["operations"]
        for name in rule["include-name"]
    }
    assert {name for name, allowed in statuses.items() if "400" in allowed} == hooks.TOKEN_OPERATIONS.keys()
    assert "422" not in statuses[operation]


def _step(schema: Any, phase: PhaseInfo, authorization: str) -> Any:
    return schema["/api/v1/users/me"]["GET"].Case(
        headers={"Authorization": authorization},
        _meta=CaseMetadata(generation=GenerationInfo(time=0.0, mode=POSITIVE), components={}, phase=phase),
    )


STATEFUL = PhaseInfo(
    name=TestPhase.STATEFUL,
    data=StatefulPhaseData(description=None, parameter=None, parameter_location=None, location=None),
)


def test_a_stateful_step_whose_token_was_ended_gets_a_new_one_for_the_next_steps(
    hooks: ModuleType, schema: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """schemathesis replays a 401 with a new token in unit phases only; the hook covers stateful steps."""
    renewed: list[Any] = []
    monkeypatch.setattr(hooks, "refresh_auth", renewed.append)
    monkeypatch.setattr(hooks, "_issued", {"Bearer ours"})
    coverage = _meta(POSITIVE).phase
    ended = _step(schema, STATEFUL, "Bearer ours")
    unit_phase = _step(schema, coverage, "Bearer ours")
    broken_on_purpose = _step(schema, STATEFUL, "Bearer not-ours")
    for case, status in [
        (ended, 401),
        (ended, 403),
        (ended, 200),
        (unit_phase, 401),
        (broken_on_purpose, 401),
    ]:
        hooks.after_call(None, case, _response(case, status, {}))
    # Only the 401 to a token we issued, in a stateful step, drops the cached token.
    assert renewed == [ended]
