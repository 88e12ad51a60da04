"""Hostile input from a tool that knows the contract: schemathesis against a real server's /openapi.json.

Two phases, bounded in examples (the module takes about 25 s) and seeded, so CI sends the same
kinds of requests every time:

- stateless: every operation with generated valid and invalid input (derandomized);
- stateful: scenarios along the document's own links (openapi.LINKS; schemathesis's guessed
  links are off), listed slot → hold → confirm/release/extend → cancel with real ids, in a few
  seeded rounds; afterwards the change log must show holds created and confirmed, or the
  links were not walked.

Every response must be no 5xx, a documented status with its content type, headers and schema.
The server runs on a SQLite file so the test can read the change log afterwards.
"""

import collections
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import create_engine, func, select

from models import SlotEvent
from schemas import EventKind
from tests.factories import ADMIN_TOKEN, bearer
from tests.server import running_server, seed_over_http

pytestmark = pytest.mark.slow

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Small on purpose: the whole module stays well under a minute on two cores.
STATELESS = settings(
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
STATEFUL_ROUNDS = 5
STATEFUL = settings(
    max_examples=50,
    stateful_step_count=10,
    database=None,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)
# Operations that end the credential they are called with: each call gets a token of its own,
# so the fuzzer does not log its own user out halfway through.
SPENDS_TOKEN = {"logout", "revokeMyToken"}


@dataclass(frozen=True)
class Fuzz:
    url: str
    database_url: str
    user: dict[str, str]
    spare_user_id: str

    def headers(self, operation: schemathesis.APIOperation) -> dict[str, str]:
        """The token an operation's security asks for: admin, the user's, or none."""
        schemes = {name for requirement in operation.definition.raw.get("security", []) for name in requirement}
        if "adminToken" in schemes:
            return bearer(ADMIN_TOKEN)
        if operation.definition.raw.get("operationId") in SPENDS_TOKEN:
            issued = httpx.post(f"{self.url}/users/{self.spare_user_id}/token", headers=bearer(ADMIN_TOKEN))
            return bearer(issued.raise_for_status().json()["token"])
        if "userToken" in schemes:
            return self.user
        return {}

    def events(self) -> dict[str, int]:
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as connection:
                rows = connection.execute(select(SlotEvent.kind, func.count()).group_by(SlotEvent.kind))
                return {kind: count for kind, count in rows}
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    """A real server on a fresh SQLite file, with a room, a dozen future slots and two users."""
    database_url = f"sqlite:///{Path(tmp_path_factory.mktemp('fuzz')) / 'booking.db'}"
    env = {"ADMIN_TOKEN": ADMIN_TOKEN, "SEED_DEMO_DATA": "false", "DATABASE_URL": database_url}
    with running_server(env) as url:
        users, _ = seed_over_http(url, ADMIN_TOKEN, users=1, slots=12)
        spare = httpx.post(f"{url}/users", json={"name": "Spare", "handle": f"s_{uuid.uuid4().hex[:16]}"})
        yield Fuzz(url, database_url, users[0], spare.raise_for_status().json()["id"])


@pytest.fixture(scope="module")
def api_schema(fuzz: Fuzz) -> schemathesis.BaseSchema:
    """The live document; without the live board, a stream that never ends (tests/test_stream.py covers it)."""
    schema = schemathesis.openapi.from_url(f"{fuzz.url}/openapi.json")
    return schema.exclude(operation_id="streamSlots")


def _fuzz_operation(operation: schemathesis.APIOperation, mode: GenerationMode, fuzz: Fuzz) -> None:
    @STATELESS
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=fuzz.headers(operation), checks=CHECKS)

    call()


# (schemathesis.pytest.from_fixture would do this loop, but 4.32 reads a pytest-internal attribute
# that pytest 9.2 no longer has: `Function._nodeid`.)
def test_every_operation_answers_as_documented(
    api_schema: schemathesis.BaseSchema, fuzz: Fuzz, subtests: pytest.Subtests
) -> None:
    for result in api_schema.get_all_operations():
        operation = result.ok()
        # Invalid input needs an input to break: an operation without parameters or body has none.
        takes_input = bool(list(operation.iter_parameters())) or bool(len(operation.body))
        for mode in GenerationMode if takes_input else [GenerationMode.POSITIVE]:
            with subtests.test(f"{operation.label} ({mode})"):
                _fuzz_operation(operation, mode, fuzz)


def test_stateful_run_walks_the_hold_lifecycle_as_documented(fuzz: Fuzz) -> None:
    # Valid input only: the stateless test sends the invalid kind; here each step should feed the next.
    positive = schemathesis.Config.from_dict(
        {"phases": {"stateful": {"generation": {"mode": "positive"}, "inference": {"algorithms": []}}}}
    )
    stateful = schemathesis.openapi.from_url(f"{fuzz.url}/openapi.json", config=positive)
    base = stateful.exclude(operation_id="streamSlots").as_state_machine()
    failures: list[FailureGroup] = []
    steps: list[str] = []

    class Machine(base):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"headers": fuzz.headers(case.operation)}

        def validate_response(self, response: schemathesis.Response, case: schemathesis.Case, **kwargs: Any) -> None:
            steps.append(f"{case.operation.label} {response.status_code}")
            try:
                case.validate_response(response, checks=CHECKS, recorder=self.recorder)
            except FailureGroup as exc:
                failures.append(exc)
                raise

    before = fuzz.events()
    for round_seed in range(STATEFUL_ROUNDS):
        # The server's state moves on, so Hypothesis cannot always replay a scenario's start the
        # same way; it then stops that round (FlakyStrategyDefinition, as schemathesis's own runner
        # treats it: not a failure). Every response up to there was checked; the next round goes on.
        with contextlib.suppress(FlakyStrategyDefinition):
            hypothesis.seed(round_seed)(Machine).run(settings=STATEFUL)
    after = fuzz.events()
    assert not failures, failures
    walked = {kind: after.get(kind, 0) - before.get(kind, 0) for kind in after}
    # The links were followed: holds were taken on listed or created slots, and confirmed.
    summary = f"{walked}; {len(steps)} steps: {collections.Counter(steps).most_common()}"
    assert walked.get(EventKind.HELD, 0) > 0, summary
    assert walked.get(EventKind.CONFIRMED, 0) > 0, summary
