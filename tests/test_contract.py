"""The API keeps its contract: schemathesis against the OpenAPI document of a real server.

uvicorn runs the app as a subprocess on a free loopback port and the schema is loaded from its
``/openapi.json``. Every response must be no server error (a 503 only where it is documented),
and have a documented status code and content type, the documented headers and a body that
matches the documented schema. Two configurations: the API open (the default), and with
``NOTIFY_API_TOKENS``, where every request is sent as generated (no token, or a wrong one: a
401, which must be documented) and again with the right bearer token.

``test_contract`` sends requests generated from the schema, valid and invalid, to every
operation, and asks for the status of every notification it got accepted. ``test_edge_cases``
sends requests that the generators never produce (numbers JSON has no literal for, a body over
the size limit, an address with a slash) through the same checks.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from tests.support.server import HOST, ServerProcess, uvicorn_server

pytestmark = pytest.mark.slow  # every setup runs under a uvicorn subprocess (and redis-server)

TOKEN = "contract-token"
AUTHORIZED = {"Authorization": f"Bearer {TOKEN}"}
POST = ("/send-notification/{email}", "POST")
STATUS = ("/notifications/{notification_id}", "GET")
MAX_EXAMPLES = 60
"""Generated requests per operation and generation mode (valid data, invalid data)."""

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
SCHEMATHESIS_CONFIG = {
    # A 503 is a server error the API documents (POST: the log's buffer is full; /readyz: a
    # writer cannot take lines). Allowed here, it still fails `status_code_conformance` on an
    # operation that does not document it; any other 5xx fails `not_a_server_error`.
    "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]}},
    # Show the exact failing request (the token is this test's own) instead of "[Filtered]".
    "output": {"sanitization": {"enabled": False}},
}
EXAMPLES = hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same requests on every run: a failure is reproducible
    database=None,  # and no replay of examples saved by an earlier run
    # Timing-based: it depends on the machine, not on the API under test.
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
ACCESS_LOG_LINE = re.compile(r'^INFO: +[\d.]+:\d+ - "')

Operation = schemathesis.APIOperation[Any, Any, Any, Any]
Case = schemathesis.Case[Operation]


@dataclass(frozen=True)
class Setup:
    settings: Mapping[str, str]
    """The server's ``NOTIFY_*`` environment."""
    extra_headers: tuple[Mapping[str, str] | None, ...]
    """Every request is sent once per entry: as generated (``None``), or with these headers."""
    redis: bool = False
    """With ``NOTIFY_BACKEND=redis`` on the tests' Redis (statuses and keys in Redis)."""

    @property
    def tokens(self) -> bool:
        return bool(self.settings.get("NOTIFY_API_TOKENS"))


SETUPS = {
    "open": Setup(settings={}, extra_headers=(None,)),
    "tokens": Setup(
        settings={"NOTIFY_API_TOKENS": f"another-token,{TOKEN}"},
        extra_headers=(None, AUTHORIZED),
    ),
    "redis": Setup(settings={"NOTIFY_BACKEND": "redis"}, extra_headers=(None,), redis=True),
}

Seen = Counter[tuple[str, bool, int]]
"""Responses by operation, whether the right token was sent, and status."""


@dataclass
class Run:
    """Sends cases to the server and checks every response against the contract."""

    schema: schemathesis.BaseSchema
    setup: Setup
    session: requests.Session
    seen: Seen

    def send(self, case: Case) -> None:
        """Send ``case`` once per ``setup.extra_headers``; raise the first violation.

        An accepted notification's status is asked for too (the only way to get a 200 from
        ``GET /notifications/{id}``: its ids are not guessable).
        """
        for headers in self.setup.extra_headers:
            response = case.call_and_validate(
                session=self.session,
                headers=None if headers is None else dict(headers),
                checks=CHECKS,
            )
            self.seen[case.operation.label, headers is not None, response.status_code] += 1
            ids = response.headers.get("x-notification-id", [])
            if (case.operation.path, case.operation.method.upper()) == POST and ids:
                status = self.operation(STATUS).Case(path_parameters={"notification_id": ids[0]})
                self.send(status)

    def operation(self, key: tuple[str, str]) -> Operation:
        path, method = key
        return self.schema[path][method]


@pytest.fixture(params=sorted(SETUPS))
def setup(request: pytest.FixtureRequest) -> Setup:
    return SETUPS[request.param]


@pytest.fixture
async def server(
    setup: Setup, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[ServerProcess]:
    settings = dict(setup.settings)
    if setup.redis:
        settings["NOTIFY_REDIS_URL"] = request.getfixturevalue("redis_url")
    async with uvicorn_server(tmp_path, settings) as server:
        yield server


@pytest.fixture
def run(server: ServerProcess, setup: Setup, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    """The server's schema and a loopback session that never goes through a proxy."""
    # `from_url` loads the schema with `requests.get`, which takes proxies from the
    # environment; the session that sends the test's requests ignores the environment.
    monkeypatch.setenv("no_proxy", HOST)
    schema = schemathesis.openapi.from_url(
        f"{server.url}/openapi.json",
        config=schemathesis.Config.from_dict(SCHEMATHESIS_CONFIG),
        timeout=10,
    )
    with requests.Session() as session:
        session.trust_env = False
        yield Run(schema=schema, setup=setup, session=session, seen=Counter())


def _service_log(server: ServerProcess) -> str:
    """The server's output without uvicorn's access log: what explains a 500."""
    lines = [line for line in server.output().splitlines() if not ACCESS_LOG_LINE.match(line)]
    return "\n".join(lines[-60:])


def _verdict(violations: list[str], server: ServerProcess) -> None:
    __tracebackhide__ = True
    if violations:
        pytest.fail(
            "\n\n".join(
                [*violations, f"server output (access log left out):\n{_service_log(server)}"]
            ),
            pytrace=False,
        )


def _has_inputs(operation: Operation) -> bool:
    """Whether there is anything to make invalid (if not, negative generation is impossible)."""
    return any(True for _ in operation.iter_parameters()) or bool(operation.body)


def _fuzz(run: Run, operation: Operation, mode: GenerationMode) -> None:
    """Send ``MAX_EXAMPLES`` generated requests to ``operation``; raise the first violation."""

    @EXAMPLES
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Case) -> None:
        run.send(case)

    fuzz()


def test_contract(run: Run, server: ServerProcess) -> None:
    violations = []
    for result in run.schema.get_all_operations():
        if not isinstance(result, Ok):
            violations.append(f"an operation schemathesis cannot use:\n{result.err()}")
            continue
        operation = result.ok()
        for mode in GenerationMode:
            if mode is GenerationMode.NEGATIVE and not _has_inputs(operation):
                continue
            try:
                _fuzz(run, operation, mode)
            except (AssertionError, BaseExceptionGroup) as exc:
                # Failed checks come as a group of `AssertionError`s: collect each operation's,
                # so that one run shows all of them.
                violations.append(f"{operation.label}, {mode} data:\n{exc}")
    _verdict(violations, server)

    # The run exercised what it is meant to: notifications accepted and rejected, statuses
    # found; with tokens, requests refused without the right token and accepted with it.
    post, status = run.operation(POST).label, run.operation(STATUS).label
    authorized = run.setup.tokens  # with tokens, only requests with the right one get through
    assert run.seen[post, authorized, 200] > 0, run.seen
    assert run.seen[post, authorized, 422] > 0, run.seen
    assert run.seen[status, authorized, 200] > 0, run.seen
    if run.setup.tokens:
        assert run.seen[post, False, 401] > 0, run.seen
        assert not [key for key in run.seen if key[1] and key[2] == 401], run.seen


TOO_LARGE = b'{"message": "' + b"x" * 20_000 + b'"}'  # NOTIFY_MAX_BODY_BYTES is 16384
EDGE_CASES: dict[str, tuple[str, bytes | None]] = {
    # Python's `json` (and pydantic's parser) read these; RFC 8259 has no literal for them.
    "a number beyond the float range": ("ada@example.com", b'{"message": 1e999}'),
    "NaN": ("ada@example.com", b'{"message": NaN}'),
    "-Infinity in an unknown field": ("ada@example.com", b'{"other": -Infinity}'),
    "a body over the size limit": ("ada@example.com", TOO_LARGE),
    # A valid address: RFC 5322 allows "/" in a local part. Encoded here, as a path parameter
    # must be (schemathesis never generates one with a "/": many servers route it ambiguously).
    "an address with a slash": ("a%2Fb@example.com", None),
}
"""Requests the generators never send: (email, raw JSON body or none)."""


def test_edge_cases(run: Run, server: ServerProcess) -> None:
    operation = run.operation(POST)
    violations = []
    for name, (email, body) in EDGE_CASES.items():
        path_parameters = {"email": email}
        case = (
            operation.Case(path_parameters=path_parameters)
            if body is None
            else operation.Case(
                path_parameters=path_parameters, body=body, media_type="application/json"
            )
        )
        try:
            run.send(case)
        except (AssertionError, BaseExceptionGroup) as exc:
            violations.append(f"{operation.label}, {name}:\n{exc}")
    _verdict(violations, server)
