"""Property-based requests from the app's own OpenAPI schema (schemathesis): whatever arrives, no
endpoint answers with a server error. Half the examples carry a valid token (or an issue number that
exists), so the code behind the token check is exercised too, not only the 400 for a bad link."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from sqlmodel import select

from newsletter.backends import create_backend
from newsletter.db import session
from newsletter.delivery import send_unfinished
from newsletter.issues import prepare_issue
from newsletter.models import Subscriber
from newsletter.tokens import CONFIRM, PREFERENCES, UNSUBSCRIBE
from newsletter.web.app import create_app
from tests.conftest import make_config
from tests.helpers import add_people, add_summaries

PURPOSES = {"/confirm/{token}": CONFIRM, "/unsubscribe/{token}": UNSUBSCRIBE, "/preferences/{token}": PREFERENCES}


def test_no_endpoint_answers_with_a_server_error(config, engine):
    add_summaries(engine, 2, category="Climate")
    add_people(engine, "ada@example.org")
    prepare_issue(engine, config)
    send_unfinished(engine, config, create_backend(config))  # so /archive/1 and the feed have content
    with session(engine) as db:
        token = db.exec(select(Subscriber.token)).one()
    app = create_app(make_config(config.base_dir, web={"subscribe_limit_per_ip": 10_000}), engine)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/subscribe", "/archive/{number}", "/archive/feed.atom", *PURPOSES}
    for operation in operations:

        @given(case=operation.as_strategy(), real=st.booleans())
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case, real):
            if real and operation.path in PURPOSES:
                case.path_parameters["token"] = app.state.web.signer.sign(PURPOSES[operation.path], token)
            if real and operation.path == "/archive/{number}":
                case.path_parameters["number"] = 1
            case.call_and_validate(checks=[not_a_server_error])

        no_server_error()
