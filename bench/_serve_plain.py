import sys
from pathlib import Path

import uvicorn

try:
    from engine.host.app import ServingApp
except ImportError:
    from engine.gateway.app import ServingApp
try:
    # The protocol class `engine serve` runs (the header-read timeout), at its default.
    from engine.cli.serve import header_timeout_seconds, uvicorn_settings

    http = uvicorn_settings(header_timeout_seconds(None))["http"]
except ImportError:  # a baseline tree from before it
    http = "httptools"
uvicorn.run(
    ServingApp(Path(sys.argv[1])),
    host="127.0.0.1",
    port=int(sys.argv[2]),
    log_level="warning",
    loop="uvloop",
    http=http,
)
