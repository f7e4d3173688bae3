"""Small helpers shared by several rooms (file writing, logging)."""
