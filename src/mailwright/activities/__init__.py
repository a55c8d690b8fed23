"""Activities, one module each; importing this package registers them."""

from mailwright.activities import (
    delete_email,
    mark_email,
    move_email,
    read_email,
    retrieve_email,
    send_email,
    set_variables,
    test_target,
)

__all__ = [
    "delete_email",
    "mark_email",
    "move_email",
    "read_email",
    "retrieve_email",
    "send_email",
    "set_variables",
    "test_target",
]
