"""The durable store: on-disk layout, atomic writes, the database schema, study state and retention."""
