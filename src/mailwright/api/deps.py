"""Dependency types: the services container, the bearer-token check and the role each route needs.

Every API route declares its role with one of `admin(...)`, `operator(...)` or
`viewer(...)` in its decorator's `dependencies` (a test walks the route table so that
no route forgets it). The dependency checks the token's role, answers 403 naming the
role needed and the token's own, and tells the audit log who is acting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, params
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from mailwright.domain.roles import Role
from mailwright.errors import AuthorizationError, PermissionDeniedError
from mailwright.services import audit
from mailwright.services.app import Services
from mailwright.services.tokens import TokenPublic

_bearer = HTTPBearer(auto_error=False, description="a token from `mailwright tokens create`")


async def get_services(request: Request) -> Services:
    # Async, as every dependency here that does no I/O: a plain `def` would cost each
    # request a round trip through the thread pool.
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def require_token(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> TokenPublic:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthorizationError(
            "this request needs an API token: send 'Authorization: Bearer TOKEN'",
            hint="the admin token is printed on the first start of `mailwright serve`; "
            "create more with `mailwright tokens create NAME --role ROLE`",
        )
    # The request-limits middleware verified this request's token before reading its body.
    verified = getattr(request.state, "verified_token", None)
    if isinstance(verified, TokenPublic):
        return verified
    return await run_in_threadpool(services.tokens.verify, credentials.credentials)


TokenDep = Annotated[TokenPublic, Depends(require_token)]


@dataclass(frozen=True, slots=True)
class RoleRule:
    """What a route needs: a role, and the action in words ("creating targets")."""

    role: Role
    action: str


# Each role dependency made by `_needs`, with its rule: how `rules_of` finds a route's role.
_RULES: dict[Any, RoleRule] = {}


def refusal(*, role: Role, rule: RoleRule, who: str) -> PermissionDeniedError:
    """The 403: what was refused, the role it needs, the role the caller has, and what to do."""
    return PermissionDeniedError(
        f"{who} is {role.article}; {rule.action} needs the {rule.role.value} role",
        role=role.value,
        required_role=rule.role.value,
        hint=f"use a token with the {rule.role.value} role (an admin creates one with "
        f"`mailwright tokens create NAME --role {rule.role.value}`)",
    )


def _needs(role: Role, action: str) -> params.Depends:
    rule = RoleRule(role=role, action=action)

    # Async on purpose: it runs in the request's own task, so the actor it sets is the one
    # the route's service calls see (a sync dependency runs in a thread, whose context is lost).
    async def check(token: TokenDep) -> TokenPublic:
        if not token.role.allows(rule.role):
            raise refusal(role=token.role, rule=rule, who="this token")
        audit.act_as(audit.Actor(face=audit.Face.API, type=audit.ActorType.TOKEN, name=token.name))
        return token

    _RULES[check] = rule
    return params.Depends(check)


def admin(action: str) -> params.Depends:
    """Only admins: creating, changing or deleting targets, account keys, workflows, triggers;
    reading the audit log."""
    return _needs(Role.ADMIN, action)


def operator(action: str) -> params.Depends:
    """Operators and admins: sending mail, starting, cancelling and retrying runs, testing targets."""
    return _needs(Role.OPERATOR, action)


def viewer(action: str) -> params.Depends:
    """Every valid token: reading."""
    return _needs(Role.VIEWER, action)


def rules_of(route: APIRoute) -> list[RoleRule]:
    """The roles a route declared with `admin`, `operator` or `viewer` (exactly one, for every route)."""
    return [_RULES[d.dependency] for d in route.dependencies if d.dependency in _RULES]
