"""Use cases the faces call; the only layer that writes the database."""
