"""The app survives the meterd agent being down: every metered route answers 503 saying metering is
unavailable, and the app keeps serving. Runs the real app (and SDK) through Flask's test client."""

from __future__ import annotations

import importlib
import socket

import pytest


def closed_port() -> int:
    """A loopback port nothing listens on: bind one, note it, close it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def client(monkeypatch):
    monkeypatch.setenv("METERD_TARGET", f"127.0.0.1:{closed_port()}")
    import app  # the client is created at import, from METERD_TARGET

    app = importlib.reload(app)  # a fresh client for this test's target, whatever imported it before
    return app.app.test_client()


@pytest.mark.parametrize("route", ["/work", "/usage"])
def test_metered_route_answers_503_while_the_agent_is_down_and_keeps_serving(client, route):
    for attempt in range(2):
        r = client.get(route, headers={"x-tenant": "acme"})
        assert r.status_code == 503, (attempt, r.get_data(as_text=True))
        assert r.get_json()["error"] == "metering unavailable"
        assert isinstance(r.get_json()["code"], str)
