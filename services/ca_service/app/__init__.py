"""The CA's service layer: use cases over the key-value store (no gRPC), the journal, the CRL publisher and the
revocation feed.

Modules: `service` (the use cases), `records` and `repository` (what is stored where), `journal` (state
changes with their hash-chained audit records, group-committed), `crls`, `feed`, `authorities`.
"""
