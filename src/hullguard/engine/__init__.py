"""Decide what is malicious: hash signatures, YARA-X rules, archives with limits, optional clamd.

Import the engine itself from :mod:`hullguard.engine.engine`; this package file stays empty
of imports so that the light modules (verdict, limits) load without YARA-X.
"""
