"""The `kagi` command group."""

from __future__ import annotations

import click

from kagi.cli.admin import admin
from kagi.cli.dev import dev
from kagi.cli.serve import serve
from kagi.cli.token import token


@click.group()
@click.version_option(package_name="kagi")
def cli() -> None:
    """kagi: client certificates and one-time passwords for corporate internet banking."""


cli.add_command(dev)
cli.add_command(serve)
cli.add_command(admin)
cli.add_command(token)
