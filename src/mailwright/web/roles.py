"""The role each web page needs, declared once per route with its session type.

Pages take `ViewerSession` (reading), `OperatorSession` (sending mail, starting,
cancelling and retrying runs, testing targets, clearing the sandbox) or `AdminSession`
(creating, changing or deleting targets, account keys, workflows and triggers, and the
audit log) instead of a bare session. A session whose role falls short gets the 403
page naming the role needed; templates hide what the role may not do (`can_change`,
`can_operate`, see `render`). The dependency also tells the audit log who is acting.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from mailwright.domain.roles import Role
from mailwright.errors import PermissionDeniedError
from mailwright.services import audit
from mailwright.services.web_auth import WebSession
from mailwright.web.session import SessionDep

_ACTIONS = {
    Role.ADMIN: "creating, changing or deleting targets, account keys, workflows and triggers "
    "(and reading the audit log)",
    Role.OPERATOR: "sending mail, starting, cancelling or retrying runs, testing targets and "
    "clearing the sandbox",
    Role.VIEWER: "reading",
}


def who(session: WebSession) -> str:
    """'you are signed in with the token 'ci'' or 'you are signed in with the admin password'."""
    if session.token_name is not None:
        return f"you are signed in with the token {session.token_name!r}, which"
    return "you are signed in with the admin password, which"


def _check(session: WebSession, needed: Role) -> WebSession:
    if not session.role.allows(needed):
        raise PermissionDeniedError(
            f"{who(session)} is {session.role.article}; {_ACTIONS[needed]} needs the {needed.value} role",
            role=session.role.value,
            required_role=needed.value,
            hint=f"sign in with a token that has the {needed.value} role, or ask an admin "
            f"(`mailwright tokens create NAME --role {needed.value}`)",
        )
    if session.token_name is not None:
        actor = audit.Actor(face=audit.Face.WEB, type=audit.ActorType.TOKEN, name=session.token_name)
    else:
        actor = audit.Actor(face=audit.Face.WEB, type=audit.ActorType.USER, name="admin")
    audit.act_as(actor)
    return session


# Async on purpose: they run in the request's own task, so the actor set here is the one the
# page's service calls see (a sync dependency runs in a worker thread, whose context is lost).
async def require_admin(session: SessionDep) -> WebSession:
    return _check(session, Role.ADMIN)


async def require_operator(session: SessionDep) -> WebSession:
    return _check(session, Role.OPERATOR)


async def require_viewer(session: SessionDep) -> WebSession:
    return _check(session, Role.VIEWER)


AdminSession = Annotated[WebSession, Depends(require_admin)]
OperatorSession = Annotated[WebSession, Depends(require_operator)]
ViewerSession = Annotated[WebSession, Depends(require_viewer)]

ROLE_DEPENDENCIES = {require_admin: Role.ADMIN, require_operator: Role.OPERATOR, require_viewer: Role.VIEWER}
