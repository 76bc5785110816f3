"""The web app skeleton: built from the config, answering on the configured database."""

from fastapi.testclient import TestClient

from newsletter.web.app import create_app


def test_app_answers_health_check(config, engine):
    client = TestClient(create_app(config, engine))
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
