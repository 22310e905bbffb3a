"""Adapters of the enrollment service: mail transports and the outbox, the store-backed repository, clients."""
