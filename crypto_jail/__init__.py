"""The crypto jail: the isolated process that alone holds private keys.

Run it with ``python -I -m crypto_jail init | serve`` (see ``crypto_jail.__main__``). It imports
only the standard library and crypto libraries (cryptography, PyNaCl, pyseccomp)::

    __main__     the command line: create a keystore, or serve it on a Unix socket
    keystore     the keys on disk (Argon2id + SecretBox, or clear 0600 for development)
    protocol     length-prefixed JSON frames; also imported by openred.crypto.client
    ops          the whitelisted operations, pure functions over the keys
    server       one thread per client, SO_PEERCRED check, never crashes on input
    hardening    no core dumps (before any secret is read), no new privileges, Landlock:
                 writes only to its own directories, seccomp: no network, no exec, no fork
    noise        Noise rev 34 KK / KKpsk0;  tokens, structures: grants, tokens, signables
    errors       the jail's own error types and wire codes
"""
