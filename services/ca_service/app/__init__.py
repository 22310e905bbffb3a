"""The CA's use cases (no gRPC), split by capability, over one repository that holds everything the CA stores.

Modules: `issuance` (prepare, issue, renew, OCSP signer issuance, recording), `revocation` (get, list, status,
revoke), `publication` (CRLs, OCSP answers, CA certificates, the revocation stream), `ocsp_signers` (keeping
the delegated OCSP signers current), `access` (actors and who may do what), `repository` and `records` (what
the CA stores, and where), `crls` (the CRL publisher), `feed` (the revocation feed), `authorities` (the CA
material a replica signs with). State changes go through `kagi.journal`, with their audit records.
"""
