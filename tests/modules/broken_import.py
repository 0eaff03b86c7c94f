"""A module whose import fails (the loader must report it and carry on)."""

raise RuntimeError("this module cannot be imported")
