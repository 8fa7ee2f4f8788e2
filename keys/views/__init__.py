"""The Keys pages, one module per page; the lifecycle actions are declared in `actions`."""
