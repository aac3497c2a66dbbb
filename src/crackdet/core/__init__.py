"""What every layer shares: the one error type, atomic writes, the params schema, the layout."""
