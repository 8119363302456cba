"""PackageTracker: a digital twin of a package, fed over HTTP and Kafka."""

from __future__ import annotations

import dataclasses
from typing import Any

from streamapp.durable import ObjectContext, Service, SharedContext, TerminalError

PACKAGE_INFO = "package-info"


@dataclasses.dataclass
class PackageRegistration:
    finalDestination: str


@dataclasses.dataclass
class LocationUpdate:
    timestamp: str
    location: str


tracker = Service("PackageTracker")


@tracker.handler()
async def RegisterPackage(ctx: ObjectContext, registration: PackageRegistration) -> None:
    ctx.set(PACKAGE_INFO, {"finalDestination": registration.finalDestination, "locations": []})


@tracker.handler()
async def UpdateLocation(ctx: ObjectContext, update: LocationUpdate) -> None:
    info = ctx.get(PACKAGE_INFO)
    if info is None:
        raise TerminalError("package not found", status_code=404)
    info["locations"].append({"timestamp": update.timestamp, "location": update.location})
    ctx.set(PACKAGE_INFO, info)


@tracker.handler(kind="shared")
async def getPackageInfo(ctx: SharedContext) -> dict[str, Any] | None:
    info: dict[str, Any] | None = ctx.get(PACKAGE_INFO)
    return info
