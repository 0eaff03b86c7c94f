"""The node: its domain events and projections (the Quart app and lifecycle tasks come later)."""
