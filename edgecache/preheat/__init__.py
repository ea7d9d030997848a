"""Preheat: policies that put images on the site (and into P2P engines) before anyone pulls.

policy.py   which images a policy selects (doublestar patterns, signed, platforms); pure code
config.py   [preheat] policies and providers, parsed and checked at start
jobs.py     a run of a policy: state, per-image and per-provider results, kept in LMDB
providers.py where images go: this site, a Dragonfly manager, a Kraken proxy
engine.py   triggers (manual, cron, events, watched upstream tags) and the job runner
"""
