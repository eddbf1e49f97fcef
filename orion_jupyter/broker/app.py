"""`orion-jupyter broker`: the broker's settings (service.py) served with its HTTP API (handlers.py);
`orion-jupyter broker --park-all` asks the running broker to park every kernel, before maintenance."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

from ..vgpu import VGPURequestError
from .booking_api import booking_routes
from .budget_api import budget_routes
from .handlers import routes
from .idle_api import idle_routes
from .park_api import park_routes
from .service import Broker


async def park_all(broker: Broker) -> int:
    """POST api/park-all to the running broker with its own token; print each kernel parked or not (and why).
    Only the running broker can park: it alone holds the kernels' connections."""
    from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

    url = f"{broker.url.rstrip('/')}/{broker.prefix.strip('/')}/api/park-all"
    if not broker.api_token:
        print("orion-jupyter broker --park-all: the broker's token is needed (c.Broker.api_token or "
              "$JUPYTERHUB_API_TOKEN, as the broker runs with)", file=sys.stderr)
        return 2
    request = HTTPRequest(url, method="POST", body=b"{}", headers={"Authorization": f"token {broker.api_token}"},
                          request_timeout=24 * 3600.0)  # many kernels, each up to park_timeout_seconds
    try:
        response = await AsyncHTTPClient().fetch(request)
    except HTTPClientError as err:
        body = err.response.body.decode(errors="replace") if err.response is not None else ""
        print(f"orion-jupyter broker --park-all: {url} answered {err.code}: {body[:500]}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"orion-jupyter broker --park-all: no broker answers at {url} ({err})", file=sys.stderr)
        return 2
    result = json.loads(response.body)
    for row in result["parked"]:
        print(f"parked   {row['user']}'s kernel {row['kernel_id']} as snapshot {row['snapshot']} "
              f"({row['bytes']} bytes)")
    for row in result["not_parked"]:
        print(f"running  {row['user']}'s kernel {row['kernel_id']}: {row['message']}")
    print(f"{len(result['parked'])} parked, {len(result['not_parked'])} not parked"
          + ("; the broker may be stopped now" if not result["not_parked"] else " (those still run)"))
    return 1 if result["not_parked"] else 0


def main(argv: list[str] | None = None) -> int:
    broker = Broker()
    broker.parse_command_line(argv)
    if broker.config_file:
        broker.load_config_file(broker.config_file)
        broker.parse_command_line(argv)  # the command line wins over the file
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s %(name)s] %(message)s")
    if broker.park_all:
        return asyncio.run(park_all(broker))
    try:
        asyncio.run(broker.serve(lambda prefix: park_routes(prefix) + routes(prefix) + idle_routes(prefix)
                                 + budget_routes(prefix) + booking_routes(prefix)))
    except VGPURequestError as err:  # a setting the broker cannot use: one line, not a traceback
        print(f"orion-jupyter broker: {err}", file=sys.stderr)
        return 2
    return 0


__all__ = ["main"]
