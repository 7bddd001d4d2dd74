"""Built-in task environments."""
