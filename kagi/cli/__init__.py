"""The `kagi` command line."""
