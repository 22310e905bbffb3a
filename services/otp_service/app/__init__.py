"""The OTP service's use cases over the key-value store: the domain applied to versioned records; no gRPC here.

- use_cases: OtpService, one method per operation (create, activate, confirm, verify, read, list, lifecycle,
  reissue, key rotation).
- verifier: the verification hot path and its round-trip budget (see its docstring).
- repository: the collections, the versioned reads and the operations that write token records.
- cache: the in-process cache of token records that lets a verification cost one store round trip.
- errors: the errors this layer adds to the domain's.
"""
