"""Adapters of the CA service: implementations of the domain's ports (signers backed by files, later HSMs)."""
