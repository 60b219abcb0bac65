"""The collector: an HTTP front door for browsers (tracker.js), agent SDKs and OTLP exporters, producing to the raw topics."""
