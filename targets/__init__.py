"""Platform adapters behind one interface (see targets.base). Prefect-free."""
