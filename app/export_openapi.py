"""Write (or check) openapi/openapi.json from the app: `python -m app.export_openapi [--check]`.

The committed document is what SDK and web clients are built against; tests/test_openapi.py
fails when it drifts from the code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


def render() -> str:
    from app.main import create_app
    from service.settings import Settings

    # Fixed settings: the document must not depend on the environment it is generated in.
    app = create_app(Settings(_env_file=None, redis_url=None, cors_origins=[], api_keys=[]))
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from the app")
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.path.read_text() if args.path.exists() else ""
        if current != text:
            print(f"{args.path} is out of date: run `python -m app.export_openapi`", file=sys.stderr)
            return 1
        return 0
    args.path.parent.mkdir(parents=True, exist_ok=True)
    args.path.write_text(text)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
