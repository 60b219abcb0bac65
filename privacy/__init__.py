"""PII protection: field rules, Presidio free-text scrubbing, HMAC pseudonyms, and the erase procedure."""

POLICY_VERSION = "privacy-1"
