"""``vcstream tenants``, ``vcstream keys`` and ``vcstream usage``: the operator's side of a paid
service, on the database ``vcstream serve`` uses (``--database-url``/VCSTREAM_DATABASE_URL, else
SQLite in ``--data-dir``) and the plans it uses (``--plans-file``/VCSTREAM_PLANS_FILE)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from vcstream.commands.db import database_of
from vcstream.service.config import add_settings_arguments, settings_from_args

if TYPE_CHECKING:
    from vcstream.service.tenancy.metering import MonthUsage, UsageLedger
    from vcstream.service.tenancy.store import TenantStore

_SETTINGS = ("data_dir", "database_url", "voices_dir", "plans_file")


def register(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    bench_sub: argparse._SubParsersAction,  # type: ignore[type-arg]
) -> None:
    tenants = sub.add_parser("tenants", help="customers of the service and their plans")
    tenant_actions = tenants.add_subparsers(dest="tenants_action", required=True)
    create = tenant_actions.add_parser("create", help="add a tenant")
    create.add_argument("name")
    create.add_argument("--plan", help="a plan of the plans file (default: its default plan)")
    create.set_defaults(func=cmd_tenants_create)
    listing = tenant_actions.add_parser("list", help="every tenant with its plan")
    listing.set_defaults(func=cmd_tenants_list)

    keys = sub.add_parser("keys", help="API keys of tenants (shown once when made)")
    key_actions = keys.add_subparsers(dest="keys_action", required=True)
    key_create = key_actions.add_parser("create", help="a new API key for a tenant; printed once")
    key_create.add_argument("tenant", help="tenant name or id")
    key_create.set_defaults(func=cmd_keys_create)
    key_list = key_actions.add_parser("list", help="a tenant's keys (ids only)")
    key_list.add_argument("tenant", help="tenant name or id")
    key_list.set_defaults(func=cmd_keys_list)
    revoke = key_actions.add_parser("revoke", help="revoke a key at once, on every replica")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=cmd_keys_revoke)

    usage = sub.add_parser("usage", help="converted minutes per day of a month")
    usage.add_argument("tenant", nargs="?", help="tenant name or id (default: every tenant)")
    usage.add_argument("--month", help="YYYY-MM (default: this month, UTC)")
    usage.add_argument("--format", choices=("table", "json", "csv"), default="table")
    usage.set_defaults(func=cmd_usage)

    for parser in (create, listing, key_create, key_list, revoke, usage):
        add_settings_arguments(parser, only=_SETTINGS)


@contextmanager
def _tenancy(args: argparse.Namespace) -> Iterator[tuple[TenantStore, UsageLedger]]:
    from vcstream.service.db.connect import ensure_sqlite_folder
    from vcstream.service.db.migrate import prepare_for_serving
    from vcstream.service.tenancy.metering import UsageLedger
    from vcstream.service.tenancy.plans import load_plans
    from vcstream.service.tenancy.store import TenantStore

    settings = settings_from_args(args)
    plans = load_plans(settings.plans_file)
    with database_of(args) as database:
        ensure_sqlite_folder(database)
        prepare_for_serving(database, settings.effective_voices_dir)  # SQLite: upgrade; else: must be at head
        yield TenantStore(database, plans), UsageLedger(database, plans, settings.replica_name)


def cmd_tenants_create(args: argparse.Namespace) -> int:
    with _tenancy(args) as (store, _):
        tenant = store.create_tenant(args.name, args.plan)
    print(f"tenant {tenant.name} ({tenant.id}) on plan {tenant.plan}")
    return 0


def cmd_tenants_list(args: argparse.Namespace) -> int:
    with _tenancy(args) as (store, _):
        tenants = store.tenants()
    for tenant in tenants:
        print(f"{tenant.id}  {tenant.plan:<12} {tenant.created_at:%Y-%m-%d}  {tenant.name}")
    if not tenants:
        print("no tenants", file=sys.stderr)
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    with _tenancy(args) as (store, _):
        made = store.create_key(args.tenant)
    print(made.key)
    print(
        f"key id {made.id}: shown once, keep it secret; revoke with `vcstream keys revoke {made.id}`",
        file=sys.stderr,
    )
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    with _tenancy(args) as (store, _):
        keys = store.keys(args.tenant)
    for key in keys:
        print(f"{key.id}  {key.created_at:%Y-%m-%d %H:%M}  {'revoked' if key.revoked else 'active'}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    with _tenancy(args) as (store, _):
        store.revoke_key(args.key_id)
    print(f"key {args.key_id} revoked")
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from vcstream.service.tenancy.metering import month_bounds

    month = args.month or datetime.now(UTC).strftime("%Y-%m")
    try:
        month_bounds(month)
    except ValueError:
        raise SystemExit(f"vcstream usage: --month must be YYYY-MM, got {month!r}") from None
    with _tenancy(args) as (store, ledger):
        tenants = [store.tenant(args.tenant)] if args.tenant else store.tenants()
        reports = [(tenant.name, ledger.month(tenant, month)) for tenant in tenants]
    _print_usage(reports, args.format)
    return 0


def _print_usage(reports: list[tuple[str, MonthUsage]], form: str) -> None:
    if form == "json":
        print(json.dumps([{"tenant": name, **usage.document()} for name, usage in reports], indent=2))
        return
    if form == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["tenant", "day", "calls", "converted_s"])
        for name, usage in reports:
            for day in usage.days:
                writer.writerow([name, day.day.isoformat(), day.calls, f"{day.converted_s:.3f}"])
        return
    for name, usage in reports:
        allowance = "no limit" if usage.allowance_minutes is None else f"of {usage.allowance_minutes:g}"
        print(f"{name}  {usage.month}: {usage.converted_s / 60:.2f} min {allowance}, {usage.calls} calls")
        for day in usage.days:
            print(f"  {day.day}  {day.calls:>5} calls  {day.converted_s / 60:8.2f} min")
