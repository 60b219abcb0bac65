"""PII protection: field rules, Presidio free-text scrubbing, HMAC pseudonyms, and the erase procedure."""

# privacy-2 (2026-12-05): the worker keeps each session's dictionary across restarts and rebalances (docs/privacy.md)
POLICY_VERSION = "privacy-2"
# what a clean record without a version was scrubbed with: privacy-1 was the only policy before versions were recorded
LEGACY_POLICY_VERSION = "privacy-1"
