"""Pure types and functions: addresses, messages, SMTP capabilities. No I/O here."""
