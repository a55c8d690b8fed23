"""Target types that exist only for the tests (each one file, registered by importing it)."""
