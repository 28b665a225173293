"""Sub-commands that live beside their feature (RTP, server). Each module has
``register(subparsers, bench_subparsers)``; ``cli.build_parser`` calls them all. Options several
commands share live in ``commands.options`` (not in ``cli``: the command line imports the commands,
never the other way round)."""

from __future__ import annotations

import argparse
from typing import Protocol


class Registrar(Protocol):
    def __call__(
        self,
        sub: argparse._SubParsersAction,  # type: ignore[type-arg]
        bench_sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    ) -> None: ...


def registrars() -> list[Registrar]:
    # One import per feature module; add yours here.
    from vcstream.commands import capacity, db, load, quality, rtp, serve, tenants

    return [
        serve.register,
        db.register,
        rtp.register,
        capacity.register,
        load.register,
        quality.register,
        tenants.register,
    ]
