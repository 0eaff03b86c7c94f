"""The crypto jail: the isolated process that alone holds private keys."""
