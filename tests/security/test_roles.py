"""Finding 9 (first half): every token was an admin. Tokens and web users now have a role.

admin: everything; operator: send, start/cancel/retry runs, test targets, read; viewer: read
only. The route table is walked so that no API route or web page can forget its role, and
every route is called over real HTTP with a token (and a web session) of each role.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from mailwright.api.deps import rules_of
from mailwright.domain.roles import Role
from mailwright.server import create_app
from mailwright.services.app import Services
from mailwright.services.targets import TargetCreate
from mailwright.storage.db import Database
from mailwright.web.roles import ROLE_DEPENDENCIES
from tests.support.apiserver import APIServer
from tests.support.cli import CLI

ROLES = (Role.ADMIN, Role.OPERATOR, Role.VIEWER)
# Pages anyone may open: signing in and out, the health check and the icon (the dashboard, at "/",
# is a viewer's).
OPEN_PAGES = {"/login", "/setup", "/logout", "/healthz", "/favicon.ico"}  # the icon: as /static


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    from mailwright.config import Settings

    services = Services(Settings(home=tmp_path_factory.mktemp("routes") / "home"))
    yield create_app(services, run_worker=False)
    services.close()


def all_routes(app: FastAPI) -> list[APIRoute]:
    """Every APIRoute of the app, routers included (FastAPI keeps included routers nested)."""
    found = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute):
            assert context.path == route.path, "a router included with a prefix: walk its context"
            found.append(route)
    return found


def methods(route: APIRoute) -> set[str]:
    return route.methods or set()


def api_routes(app: FastAPI) -> list[APIRoute]:
    return [r for r in all_routes(app) if r.path.startswith("/api/")]


def page_routes(app: FastAPI) -> list[APIRoute]:
    return [r for r in all_routes(app) if not r.path.startswith("/api/") and r.path not in OPEN_PAGES]


# --- the route table ------------------------------------------------------------------------


def test_every_api_route_declares_exactly_one_role(app: FastAPI) -> None:
    routes = api_routes(app)
    assert len(routes) > 30  # the walk sees the routers (a broken filter would pass vacuously)
    undeclared = [f"{sorted(methods(r))} {r.path}" for r in routes if len(rules_of(r)) != 1]
    assert not undeclared, (
        "these API routes declare no role (or several): add dependencies=[admin(...)], "
        f"[operator(...)] or [viewer(...)] from mailwright.api.deps: {undeclared}"
    )


def test_the_policy_reads_are_for_viewers_changes_for_admins(app: FastAPI) -> None:
    for route in api_routes(app):
        (rule,) = rules_of(route)
        where = f"{sorted(methods(route))} {route.path}"
        if route.path == "/api/v1/audit":
            assert rule.role is Role.ADMIN, where
        elif methods(route) <= {"GET", "HEAD"}:
            assert rule.role is Role.VIEWER, where
        elif methods(route) & {"PATCH", "DELETE"}:
            assert rule.role is Role.ADMIN, where
    roles = {(m, r.path): rules_of(r)[0].role for r in api_routes(app) for m in methods(r)}
    assert roles["POST", "/api/v1/targets"] is Role.ADMIN
    assert roles["POST", "/api/v1/account-keys"] is Role.ADMIN
    assert roles["POST", "/api/v1/workflows"] is Role.ADMIN
    assert roles["POST", "/api/v1/workflows/{ref}/triggers/{index}/enable"] is Role.ADMIN
    assert roles["POST", "/api/v1/send-email"] is Role.OPERATOR
    assert roles["POST", "/api/v1/send-email/batch"] is Role.OPERATOR
    assert roles["POST", "/api/v1/workflows/{ref}/start"] is Role.OPERATOR
    assert roles["POST", "/api/v1/runs/{run_id}/cancel"] is Role.OPERATOR
    assert roles["POST", "/api/v1/runs/{run_id}/retry"] is Role.OPERATOR


def test_openapi_documents_the_403_where_a_role_can_be_refused(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    for route in api_routes(app):
        (rule,) = rules_of(route)
        for method in methods(route):
            responses = paths[route.path_format][method.lower()]["responses"]
            where = f"{method} {route.path}"
            if rule.role is Role.VIEWER:
                assert "403" not in responses, f"{where}: every token may do this, no 403"
            else:
                assert "403" in responses, f"{where} needs {rule.role}: add 403 to its errors(...)"
                assert responses["403"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorBody")


def test_every_web_page_declares_exactly_one_role(app: FastAPI) -> None:
    routes = page_routes(app)
    assert len(routes) > 30
    undeclared = []
    for route in routes:
        declared = [d.call for d in route.dependant.dependencies if d.call in ROLE_DEPENDENCIES]
        if len(declared) != 1:
            undeclared.append(f"{sorted(methods(route))} {route.path}")
    assert not undeclared, (
        "these pages take no role (or several): use AdminSession, OperatorSession or ViewerSession "
        f"from mailwright.web.roles instead of SessionDep: {undeclared}"
    )


# --- real HTTP: every route with each role ---------------------------------------------------


def _concrete(path: str) -> str:
    """A path with made-up parameters: the role is checked before anything is looked up."""
    values = {"ref": "no-such-thing", "run_id": str(uuid.uuid4()), "index": "0", "message_id": "nope"}
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values.get(m.group(1), "x"), path)


@dataclass
class Server:
    base_url: str
    tokens: dict[Role, str]
    cookies: dict[Role, str]
    csrf: dict[Role, str]


def _sign_in(client: httpx.Client, secret: str) -> tuple[str, str]:
    """Sign in through the log-in form as a browser does; the session cookie and its CSRF token."""
    form = client.get("/login")
    login_csrf = re.search(r'name="login_csrf" value="([^"]+)"', form.text)
    assert login_csrf is not None, form.text
    answer = client.post(
        "/login",
        data={"secret": secret, "next": "/targets", "login_csrf": login_csrf.group(1)},
        headers={"Cookie": f"mw_login_csrf={form.cookies['mw_login_csrf']}"},
    )
    assert answer.status_code == 303, answer.text
    cookie = answer.cookies["mw_session"]
    page = client.get("/targets", headers={"Cookie": f"mw_session={cookie}"})
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None, page.text
    return cookie, csrf.group(1)


@pytest.fixture
def server(mw: Services) -> Iterator[Server]:
    tokens = {role: mw.tokens.create(f"{role.value}-token", role=role).token for role in ROLES}
    with APIServer(mw) as running, httpx.Client(base_url=running.base_url, timeout=30) as client:
        cookies, csrf = {}, {}
        for role in ROLES:
            cookies[role], csrf[role] = _sign_in(client, tokens[role])
        yield Server(running.base_url, tokens, cookies, csrf)


def test_every_api_route_refuses_exactly_the_roles_below_its_own(server: Server, mw: Services) -> None:
    app = create_app(mw, run_worker=False)
    wrong = []
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for route in api_routes(app):
            (rule,) = rules_of(route)
            for method in sorted(methods(route)):
                for role in ROLES:
                    answer = client.request(
                        method,
                        _concrete(route.path),
                        headers={"Authorization": f"Bearer {server.tokens[role]}"},
                        json={} if method in ("POST", "PATCH") else None,
                    )
                    refused = answer.status_code == 403
                    if refused != (not role.allows(rule.role)):
                        wrong.append(
                            f"{role} {method} {route.path}: {answer.status_code} {answer.text[:200]}"
                        )
                    if refused:
                        error = answer.json()["error"]
                        assert error["code"] == "forbidden"
                        assert (error["role"], error["required_role"]) == (role.value, rule.role.value)
                        assert error["message"] == (
                            f"this token is {role.article}; {rule.action} needs the {rule.role.value} role"
                        )
    assert not wrong, "\n".join(wrong)


def test_a_viewer_is_told_which_role_creating_a_target_needs(server: Server) -> None:
    answer = httpx.post(
        f"{server.base_url}/api/v1/targets",
        headers={"Authorization": f"Bearer {server.tokens[Role.VIEWER]}"},
        json={"display_name": "Relay", "server": "smtp.example.test", "no_account_keys": True},
    )
    assert answer.status_code == 403
    error = answer.json()["error"]
    assert error["message"] == "this token is a viewer; creating targets needs the admin role"
    assert "--role admin" in error["hint"]


def test_roles_do_what_they_may(server: Server, mw: Services) -> None:
    def call(role: Role, method: str, path: str, **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {server.tokens[role]}"}
        return httpx.request(method, f"{server.base_url}{path}", headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]

    relay = {"display_name": "Relay", "server": "smtp.example.test", "port": 587, "no_account_keys": True}
    assert call(Role.ADMIN, "POST", "/api/v1/targets", json=relay).status_code == 201
    for role in ROLES:
        assert call(role, "GET", "/api/v1/targets").json()[0]["display_name"] == "Relay"
    # An operator may send (accepted: nothing listens at the target, which does not matter here).
    message = {
        "target": "Relay",
        "from": "a@example.org",
        "to": ["b@example.org"],
        "subject": "s",
        "body": "t",
    }
    sent = call(Role.OPERATOR, "POST", "/api/v1/send-email?wait=false", json=message)
    assert sent.status_code == 202, sent.text
    run_id = sent.json()["run_id"]
    assert call(Role.VIEWER, "GET", f"/api/v1/runs/{run_id}").status_code == 200
    assert call(Role.VIEWER, "POST", f"/api/v1/runs/{run_id}/cancel").status_code == 403
    assert call(Role.OPERATOR, "PATCH", "/api/v1/targets/Relay", json={"port": 25}).status_code == 403
    assert call(Role.OPERATOR, "DELETE", "/api/v1/targets/Relay").status_code == 403
    assert call(Role.ADMIN, "GET", "/api/v1/audit").status_code == 200
    assert mw.targets.get("Relay").port == 587


def test_every_web_page_refuses_exactly_the_roles_below_its_own(server: Server, mw: Services) -> None:
    app = create_app(mw, run_worker=False)
    wrong = []
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for route in page_routes(app):
            (needed,) = [
                ROLE_DEPENDENCIES[d.call] for d in route.dependant.dependencies if d.call in ROLE_DEPENDENCIES
            ]
            for method in sorted(methods(route)):
                for role in ROLES:
                    answer = client.request(
                        method,
                        _concrete(route.path),
                        headers={"Cookie": f"mw_session={server.cookies[role]}"},
                        data={"csrf_token": server.csrf[role]} if method == "POST" else None,
                    )
                    refused = answer.status_code == 403 and f"needs the {needed.value} role" in answer.text
                    if refused != (not role.allows(needed)):
                        wrong.append(f"{role} {method} {route.path}: {answer.status_code}")
                    if refused:  # a page, not the API's JSON
                        assert answer.headers["content-type"].startswith("text/html")
                        assert "<h1>Not allowed</h1>" in answer.text
                        assert f"is {role.article}" in answer.text
    assert not wrong, "\n".join(wrong)


def test_web_pages_hide_what_the_role_may_not_do(server: Server, mw: Services) -> None:
    mw.targets.create(
        TargetCreate(display_name="Relay", server="smtp.example.test", port=587, no_account_keys=True)
    )
    target = mw.targets.get("Relay")

    def page(role: Role, path: str) -> str:
        answer = httpx.get(
            f"{server.base_url}{path}", headers={"Cookie": f"mw_session={server.cookies[role]}"}
        )
        assert answer.status_code == 200, answer.text
        return answer.text

    admin_list, viewer_list = page(Role.ADMIN, "/targets"), page(Role.VIEWER, "/targets")
    assert 'href="/targets/new"' in admin_list and 'href="/targets/new"' not in viewer_list
    assert 'href="/audit"' in admin_list and 'href="/audit"' not in viewer_list
    assert 'href="/send"' not in viewer_list and 'href="/send"' in page(Role.OPERATOR, "/targets")
    operator_detail = page(Role.OPERATOR, f"/targets/{target.id}")
    assert "Test connection" in operator_detail and f"/targets/{target.id}/edit" not in operator_detail
    viewer_detail = page(Role.VIEWER, f"/targets/{target.id}")
    assert "Test connection" not in viewer_detail and f"/targets/{target.id}/delete" not in viewer_detail
    assert f"/targets/{target.id}/delete" in page(Role.ADMIN, f"/targets/{target.id}")


def test_only_an_admin_token_may_set_the_first_admin_password(server: Server, mw: Services) -> None:
    assert not mw.web_auth.check_token(server.tokens[Role.OPERATOR])
    assert not mw.web_auth.check_token(server.tokens[Role.VIEWER])
    assert mw.web_auth.check_token(server.tokens[Role.ADMIN])


# --- the CLI and the migration ---------------------------------------------------------------


def test_tokens_create_takes_a_role_defaults_to_operator_and_list_shows_it(cli: CLI, mw: Services) -> None:
    plain = cli("tokens", "create", "ci")
    assert plain.returncode == 0, plain
    assert "operator role" in plain.stderr
    viewer = cli("tokens", "create", "dash", "--role", "viewer")
    assert viewer.returncode == 0, viewer
    bad = cli("tokens", "create", "x", "--role", "root")
    assert bad.returncode == 2 and "admin" in bad.stderr and "viewer" in bad.stderr, bad
    listing = cli("tokens", "list")
    assert re.search(r"^ci\s+operator\s", listing.stdout, re.M), listing
    assert re.search(r"^dash\s+viewer\s", listing.stdout, re.M), listing
    assert {t["name"]: t["role"] for t in cli("tokens", "list", "--json").json()} == {
        "ci": "operator",
        "dash": "viewer",
    }
    # The role holds over HTTP.
    with APIServer(mw) as running:
        token = viewer.stdout.strip()
        answer = httpx.delete(
            f"{running.base_url}/api/v1/targets/any", headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 403
        assert (
            answer.json()["error"]["message"]
            == "this token is a viewer; deleting targets needs the admin role"
        )


def test_tokens_made_before_roles_become_admins(tmp_path: Path) -> None:
    """Migration 0008: a token (and a web session) from 0007 keeps working as an admin."""
    from importlib import resources

    from alembic import command
    from alembic.config import Config

    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("mailwright.storage").joinpath("migrations"))
    )
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0007")
        connection.execute(
            sa.text(
                "INSERT INTO api_tokens (id, name, name_key, token_hash, prefix, created_at) "
                "VALUES ('t1', 'old', 'old', 'abc', 'mw_old', '2026-01-01 00:00:00')"
            )
        )
    db.migrate()
    with db.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT role FROM api_tokens")).scalar() == "admin"
    db.dispose()
