"""TEST-ONLY conformance vectors and their generator (docs/protocol.md section 11)."""
