"""Secrets: the encrypted store behind `{{secrets/scope/key}}`, and the managed scope that
`*_plaintext` values move into."""
