"""The `kagi` command group."""

import click


@click.group()
def cli() -> None:
    """kagi: client certificates and one-time passwords for corporate internet banking."""
