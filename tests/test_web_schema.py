"""Property-based requests from the app's own OpenAPI schema (schemathesis): whatever arrives, no
endpoint answers with a server error."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from newsletter.backends import create_backend
from newsletter.delivery import send_unfinished
from newsletter.digest import prepare_issue
from newsletter.web.app import create_app
from tests.conftest import make_config
from tests.helpers import add_people, add_summaries


@pytest.fixture
def web_schema(config, engine):
    add_summaries(engine, 2, category="Climate")
    add_people(engine, "ada@example.org")
    prepare_issue(engine, config)
    send_unfinished(engine, config, create_backend(config))  # so /archive/1 and the feed have content
    app = create_app(make_config(config.base_dir, web={"subscribe_limit_per_ip": 10_000}), engine)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_no_endpoint_answers_with_a_server_error(web_schema):
    operations = [result.ok() for result in web_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/subscribe", "/confirm/{token}", "/unsubscribe/{token}",
                                              "/preferences/{token}", "/archive/{number}", "/archive/feed.atom"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case):
            case.call_and_validate(checks=[not_a_server_error])

        no_server_error()
