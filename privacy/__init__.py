"""PII protection: field rules, Presidio free-text scrubbing, HMAC pseudonyms, and the erase procedure."""

# privacy-2 (2026-12-05): the worker keeps each session's dictionary across restarts and rebalances (docs/privacy.md)
# privacy-3 (2026-12-06): international phone numbers by pattern; Presidio on spaCy's NER alone (docs/privacy.md)
# privacy-4 (2026-12-07): Presidio's spans trimmed to letters and digits; airline words spaCy took for names allowed
# privacy-5 (2026-12-07): object keys and numeric ids scrubbed; a pseudonymized field always gets its pseudonym; known
#   values in structural fields replaced; card digits after "ends with"/"last digits", zip codes after "zip",
#   lower-case names after "my name is" (docs/privacy.md)
# privacy-6 (2026-12-07): street addresses in any case ("i live at 123 main street"), "<number> Broadway", a unit
#   alone in any case, and the zip code after an address (docs/privacy.md)
POLICY_VERSION = "privacy-6"
# what a clean record without a version was scrubbed with: privacy-1 was the only policy before versions were recorded
LEGACY_POLICY_VERSION = "privacy-1"
