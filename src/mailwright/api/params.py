"""Path, query and header parameters shared by the routes, each bounded the way the services can take it.

A value out of bounds is a 422 before any work is done: never a 500, and never
after a message was stored or sent (a client retrying on 5xx would send it twice).
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Header, Path, Query, Request

from mailwright.errors import ValidationError
from mailwright.services.idempotency import HEADER, KEY_PATTERN, MAX_KEY_LENGTH

WAIT_LIMIT = 600.0  # seconds an answer waits for a run at most
MAX_PAGE = 1000  # items per page at most
MAX_OFFSET = 1_000_000_000  # steps (or items) skipped at most
MAX_INDEX = 9_999  # a schedule's or trigger's position in its workflow document
MAX_REF_LENGTH = 255
# No control characters: no name may hold them, and PostgreSQL refuses NUL in text.
NO_CONTROL = r"^[^\x00-\x1f\x7f]+$"

Ref = Annotated[
    str,
    Path(
        description="display name (any case) or id",
        min_length=1,
        max_length=MAX_REF_LENGTH,
        pattern=NO_CONTROL,
    ),
]
RunId = Annotated[str, Path(description="the run's id", min_length=1, max_length=64, pattern=NO_CONTROL)]
Index = Annotated[int, Path(ge=0, le=MAX_INDEX, description="its position in the workflow document, from 0")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"items at most (1 to {MAX_PAGE})")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip")]
Timeout = Annotated[
    float,
    Query(gt=0, le=WAIT_LIMIT, allow_inf_nan=False, description="seconds to wait for the result at most"),
]
NameFilter = Annotated[
    str | None,
    Query(description="a workflow's name or id", min_length=1, max_length=MAX_REF_LENGTH, pattern=NO_CONTROL),
]
# Declared with its bounds for the OpenAPI document; checked by the service, whose 422 says
# what a key must be (FastAPI's own message would only quote the pattern).
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=HEADER,
        description=f"a key of your choice (1 to {MAX_KEY_LENGTH} printable ASCII characters, e.g. a "
        "UUID): a retry with the same key and body gets the first request's run instead of "
        "sending again; the same key with another body is refused (422). Kept for 24 hours.",
        json_schema_extra={"minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": KEY_PATTERN},
    ),
]


# A JSON string can hold NUL only as the escape \u0000 (a raw NUL byte is not JSON); the escape
# counts when its backslash is not itself escaped, i.e. after an even run of backslashes.
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


async def refuse_nul(request: Request) -> None:
    """No NUL character anywhere in a JSON body: PostgreSQL cannot store one (it would be a 500).

    Nothing Mailwright keeps (names, addresses, headers, text) has a use for it.
    """
    body = await request.body()  # read once: FastAPI has read it already for the route
    if b"\\u0000" in body and _NUL_ESCAPE.search(body):
        raise ValidationError(
            "the request holds a NUL character (\\u0000), which cannot be stored",
            field="body",
            hint="remove it; to send binary data, use an attachment's base64 content",
        )
