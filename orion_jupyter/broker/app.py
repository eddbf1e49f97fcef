"""`orion-jupyter broker`: the broker's settings (service.py) served with its HTTP API (handlers.py)."""

from __future__ import annotations

import asyncio
import logging
import sys

from ..vgpu import VGPURequestError
from .booking_api import booking_routes
from .budget_api import budget_routes
from .handlers import routes
from .service import Broker


def main(argv: list[str] | None = None) -> int:
    broker = Broker()
    broker.parse_command_line(argv)
    if broker.config_file:
        broker.load_config_file(broker.config_file)
        broker.parse_command_line(argv)  # the command line wins over the file
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s %(name)s] %(message)s")
    try:
        asyncio.run(broker.serve(lambda prefix: routes(prefix) + budget_routes(prefix) + booking_routes(prefix)))
    except VGPURequestError as err:  # a setting the broker cannot use: one line, not a traceback
        print(f"orion-jupyter broker: {err}", file=sys.stderr)
        return 2
    return 0


__all__ = ["main"]
