"""Start a node of a Ray cluster others can reach: python search/ray_node.py [ray start arguments]

Refuses, in one line, a node without token auth (RAY_AUTH_MODE=token, the token's file in
RAY_AUTH_TOKEN_PATH), which Ray itself would start open to anyone, then becomes `ray start` with the
arguments given. docker-compose.yml starts every Ray node this way.
"""
from __future__ import annotations

import os
import sys

from core.errors import run_command
from search.cluster import require_token


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if run_command(require_token):
        return 2
    # Ray's CLI of this interpreter, wherever PATH points
    os.execv(sys.executable, [sys.executable, "-m", "ray.scripts.scripts", "start", *args])


if __name__ == "__main__":
    sys.exit(main())
