"""The services container for web routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from mailwright.services.app import Services


async def get_services(request: Request) -> Services:
    # Async: no I/O here, and a plain `def` would cost each request a thread-pool round trip.
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
