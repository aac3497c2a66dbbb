"""Source kinds: one module per kind of ``fetch.sources`` entry, and the helpers they share."""
