"""PKI files and ceremony tooling: issuing, key files, signers (file or PKCS#11), CSRs, dev PKI.

Validation of certificates is not here: every party checks what it receives with
``broker.core.pki`` (sans-io). This package is the CA and operator side; it must never send a
private key anywhere, and never print or log key material.
"""
