"""Files on disk: the run directory and its files (`folder`), the process training in it (`process`), writes that
survive a crash (`durable`), and the fingerprints that key caches (`fingerprint`).
"""
