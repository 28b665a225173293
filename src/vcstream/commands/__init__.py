"""Sub-commands that live beside their feature (RTP, server). Each module has
``register(subparsers, bench_subparsers, add_engine_options)``; ``cli.build_parser`` calls them all."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Protocol


class Registrar(Protocol):
    def __call__(
        self,
        sub: argparse._SubParsersAction,  # type: ignore[type-arg]
        bench_sub: argparse._SubParsersAction,  # type: ignore[type-arg]
        add_engine_options: Callable[[argparse.ArgumentParser], None],
    ) -> None: ...


def registrars() -> list[Registrar]:
    # One import per feature module; add yours here.
    from vcstream.commands import db, rtp, serve

    return [serve.register, db.register, rtp.register]
