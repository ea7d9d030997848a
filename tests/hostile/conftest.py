"""Fixtures for the hostile-input suite: real edgecache processes fed what an attacker or a
careless client sends.

Each module gets its own server (scope="module"; `edgecache` and `small_disk` are in
tests/conftest.py); a test that needs an upstream starts it.
"""
