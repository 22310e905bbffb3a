"""The CA's pure domain core: hierarchy, issuance, revocation, CRL, OCSP and audit; no I/O, no clock of its own.

Modules: `keys` and `signer` (key policy and the Signer port), `csr`, `identity`, `profiles`, `serials`,
`settings`, `authority` and `hierarchy` (the CAs), `issuance`, `revocation`, `crl`, `ocsp`, `audit`, `errors`.
"""
