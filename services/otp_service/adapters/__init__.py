"""Adapters of the OTP service (its store's group commit is the shared one, `kagi.store.group_commit`)."""
