"""`nvc keys create|list|revoke`: the API keys of the service.

Keys live in a JSON file (NVC_API_KEYS_FILE, default DATA_DIR/api-keys.json) that holds only
each key's SHA-256, id, name and dates; the key itself is printed once, by `create`, and never
stored. A running API re-reads the file within a second: a new key works and a revoked one is
refused without a restart. Once the file exists the API requires a key on every job route.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "keys", help="create, list and revoke API keys of the service",
        description="Manage the API keys of the NVC service (a file of SHA-256 hashes; see NVC_API_KEYS_FILE).",
    )
    p.add_argument("--file", type=Path, default=None,
                   help="key file (default: NVC_API_KEYS_FILE, else NVC_DATA_DIR/api-keys.json)")
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    sub.required = True

    c = sub.add_parser("create", help="make a new key and print it (once)")
    c.add_argument("--name", default="", help="who or what uses the key (shown by `list`)")
    c.add_argument("--json", action="store_true", help="print the key and its record as JSON")
    c.set_defaults(handler=create)

    ls = sub.add_parser("list", help="list keys (ids, names, dates; never the keys)")
    ls.add_argument("--json", action="store_true", help="JSON output")
    ls.set_defaults(handler=list_keys)

    r = sub.add_parser("revoke", help="revoke a key by id (the API refuses it within a second)")
    r.add_argument("id", help="key id, as `nvc keys list` shows it")
    r.set_defaults(handler=revoke)


class _CheckedKeyFile:
    """KeyFile whose format errors become one-line CLI errors."""

    def __init__(self, path: Path):
        from app.auth import KeyFile

        self._keys = KeyFile(path)
        self.path = self._keys.path

    def __getattr__(self, name: str):
        from app.auth import KeyFileError
        from nvc.cli import CLIError

        method = getattr(self._keys, name)

        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except KeyFileError as exc:
                raise CLIError(str(exc)) from None

        return call


def _key_file(args: argparse.Namespace) -> _CheckedKeyFile:
    if args.file is not None:
        return _CheckedKeyFile(args.file)
    from service.settings import Settings, get_settings

    get_settings.cache_clear()
    return _CheckedKeyFile(Settings().resolved_api_keys_file)


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _describe(record) -> dict:
    return {"id": record.id, "name": record.name, "owner": record.owner, "created_at": _when(record.created_at),
            "revoked_at": None if record.revoked_at is None else _when(record.revoked_at)}


def create(args: argparse.Namespace) -> int:
    keys = _key_file(args)
    token, record = keys.create(args.name)
    if args.json:
        print(json.dumps({"key": token, **_describe(record)}))
    else:
        print(token)
    print(f"nvc: created key {record.id}{f' ({record.name})' if record.name else ''} in {keys.path}; "
          "it is shown only now (the file keeps its SHA-256). Send it as `Authorization: Bearer <key>`.",
          file=sys.stderr)
    return 0


def list_keys(args: argparse.Namespace) -> int:
    keys = _key_file(args)
    records = keys.load()
    if args.json:
        print(json.dumps([_describe(r) for r in records], indent=2))
        return 0
    if not records:
        print(f"nvc: no keys in {keys.path}", file=sys.stderr)
        return 0
    rows = [("ID", "NAME", "OWNER", "CREATED", "REVOKED")]
    rows += [(r.id, r.name or "-", r.owner, _when(r.created_at), _when(r.revoked_at)) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def revoke(args: argparse.Namespace) -> int:
    from nvc.cli import CLIError

    keys = _key_file(args)
    try:
        record = keys.revoke(args.id)
    except KeyError:
        raise CLIError(f"no key {args.id!r} in {keys.path} (see `nvc keys list`)") from None
    print(f"nvc: key {record.id} is revoked (since {_when(record.revoked_at)}); the API refuses it within a second",
          file=sys.stderr)
    return 0
