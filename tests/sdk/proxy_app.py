"""The recording proxy alone in a Litestar app over a SQLite store, for uvicorn:

    BP_DB=PATH BP_UPSTREAM=URL [BP_UPSTREAM_KEY=KEY] uvicorn --factory tests.sdk.proxy_app:app
"""

from __future__ import annotations

import os

from litestar import Litestar

from branchpoint.store.log import open_log
from branchpoint.store.proxy import ProxyConfig, proxy_router


def app() -> Litestar:
    async def open_store(app: Litestar) -> None:
        app.state.log = await open_log(f"sqlite:///{os.environ['BP_DB']}")

    async def close_store(app: Litestar) -> None:
        await app.state.log.close()

    config = ProxyConfig(upstream=os.environ["BP_UPSTREAM"],
                         upstream_key=os.environ.get("BP_UPSTREAM_KEY"))
    return Litestar(route_handlers=[proxy_router(config)], on_startup=[open_store],
                    on_shutdown=[close_store])
