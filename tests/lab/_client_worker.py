"""The lab's HTTP client, run as a script inside the client namespace.

Reads one JSON command per line on stdin (``{"url": ..., "timeout": ...}``), makes
that request over a NEW TCP connection, and writes one JSON result per line on
stdout. Exits at end of input. ``--lab`` only marks the command line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from urllib.parse import urlsplit


def request(url: str, timeout: float) -> dict[str, object]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    started = time.monotonic()
    result: dict[str, object] = {"url": url, "started": time.time()}
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read(4096).decode(errors="replace")
        result.update(status=response.status, body=body)
    except (OSError, http.client.HTTPException) as exc:
        result.update(error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
        result["elapsed"] = time.monotonic() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lab", default="")
    parser.parse_args()
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        result = request(str(command["url"]), float(command.get("timeout", 2.0)))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
