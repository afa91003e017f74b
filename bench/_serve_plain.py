import sys
from pathlib import Path

import uvicorn

try:
    from engine.host.app import ServingApp
except ImportError:
    from engine.gateway.app import ServingApp
uvicorn.run(
    ServingApp(Path(sys.argv[1])),
    host="127.0.0.1",
    port=int(sys.argv[2]),
    log_level="warning",
    loop="uvloop",
    http="httptools",
)
