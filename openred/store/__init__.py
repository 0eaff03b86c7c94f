"""The event store: events, canonical codec, chain, Merkle tree, projections, replay."""
