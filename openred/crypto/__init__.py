"""Public-key helpers and the client of the crypto jail. No private key is ever held here."""
