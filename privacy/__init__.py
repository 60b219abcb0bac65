"""PII protection: field rules, Presidio free-text scrubbing, HMAC pseudonyms, and the erase procedure."""

POLICY_VERSION = "privacy-1"
# what a clean record without a version was scrubbed with: privacy-1 was the only policy before versions were recorded
LEGACY_POLICY_VERSION = "privacy-1"
