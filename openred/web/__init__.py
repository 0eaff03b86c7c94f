"""Shared HTTP infrastructure for the OpenRed services (directory and node).

``problems`` (RFC 9457 answers), ``signatures`` (inbound RFC 9421), ``client`` (the pooled,
signed outbound client), ``urls`` (SSRF checks), ``serve`` (Hypercorn with clean shutdown).
Importing this package imports nothing else: import the module you need.
"""
