"""Roles of API tokens and web users, and what each may do.

`admin` may do everything; `operator` may also send mail, start, cancel and retry
runs, test targets and clear the sandbox, but not create, change or delete targets,
account keys, workflows, triggers or tokens; `viewer` may only read. Every role
reads everything except secrets (which nobody reads back) and the audit log
(admin only).
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        """Whether this role may do what `needed` may (admin ⊇ operator ⊇ viewer)."""
        return self.rank >= needed.rank

    @property
    def article(self) -> str:
        """'an admin', 'an operator', 'a viewer'."""
        return ("an " if self.value[0] in "aeiou" else "a ") + self.value


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}
