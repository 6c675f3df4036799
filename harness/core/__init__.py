"""Ground floor: bad-input errors, value parsers, metric definitions and the engine contract."""
