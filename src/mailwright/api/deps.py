"""Dependency types: the services container and the bearer-token check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mailwright.errors import AuthorizationError
from mailwright.services.app import Services
from mailwright.services.tokens import TokenPublic

_bearer = HTTPBearer(auto_error=False, description="a token from `mailwright tokens create`")


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def require_token(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> TokenPublic:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthorizationError(
            "this request needs an API token: send 'Authorization: Bearer TOKEN'",
            hint="the admin token is printed on the first start of `mailwright serve`; "
            "create more with `mailwright tokens create NAME`",
        )
    return services.tokens.verify(credentials.credentials)


TokenDep = Annotated[TokenPublic, Depends(require_token)]
