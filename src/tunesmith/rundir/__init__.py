"""Files on disk: the run directory and its records (`folder`), writes that survive a crash (`durable`), and the
fingerprints that key caches (`fingerprint`).
"""
